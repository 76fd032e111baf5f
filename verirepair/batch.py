"""``verirepair batch``: ``check`` over a VNN-COMP instances CSV, in worker processes.

The instances CSV has one ``onnx,vnnlib,timeout`` row per instance, paths relative to the
CSV's folder (the VNN-COMP layout; ``.gz`` files are accepted). Every instance runs in a
worker process that is started once and fed one instance at a time; with more than one
worker each uses a single torch thread. A worker that dies, or overruns its instance's
timeout by far, is killed and replaced: its instance is reported, the run goes on.

Plain data in, plain data out: :func:`read_instances` -> ``list[BatchTask]``,
:func:`run_pool` calls ``on_done(BatchOutcome)`` as each instance finishes;
:func:`read_expected`, :func:`expected_answer` and :func:`judge` compare verdicts with
known answers.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from verirepair.errors import InputFileError

# A worker that overruns its instance's timeout by this factor plus grace is killed (the
# verifier honours its own deadline; this only keeps a hang from stalling the whole run).
HARD_KILL_FACTOR = 1.25
HARD_KILL_GRACE_S = 30.0

VERDICTS = ("holds", "violated", "unknown", "timeout", "error")
SOLVED = ("holds", "violated")
# Known-answer words: ours and the VNN-COMP result words; the NO_ANSWER words mean that
# no answer is known. Any other word is refused (a typo must not silently drop a row).
EXPECTED_WORDS = {"holds": "holds", "unsat": "holds", "violated": "violated",
                  "sat": "violated"}
NO_ANSWER_WORDS = ("unknown", "timeout", "error", "")
# A worker that has not imported its modules after this long is stuck.
START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BatchTask:
    """One instance: names as written in the CSV, resolved paths, its timeout."""

    index: int  # position among the instances (output order)
    onnx: str
    vnnlib: str
    onnx_path: Path
    vnnlib_path: Path
    timeout: float
    line: int = 0  # line in the instances CSV (for messages)


@dataclass
class BatchOutcome:
    """What one instance ended in. ``verdict`` is one of :data:`VERDICTS`; ``error_kind``
    is ``"input"`` (bad model/property: the user's to fix) or ``"internal"`` (a bug, a
    worker that died or overran) when ``verdict == "error"``."""

    task: BatchTask
    verdict: str
    seconds: float
    boxes: int | None = None
    reason: str = ""
    cex: dict | None = None
    result_text: str = ""  # the VNN-COMP result file ("" for errors)
    error_kind: str = ""
    status: str = ""  # with known answers: correct | wrong | unsolved | unchecked
    engine: str = ""  # the engine that answered (recorded in the results table)
    digest: str = ""  # of the instance's two files (see instance_digest)


# --------------------------------------------------------------------------- input

def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank row."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(fh), 1)
                    if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{path}: cannot read the CSV: {exc}") from None


def _timeout(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputFileError(f"{where}: timeout '{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise InputFileError(f"{where}: timeout must be a positive number, got '{text}'")
    return value


def _is_header(cells: list[str]) -> bool:
    return len(cells) >= 2 and cells[0].lower() == "onnx" and cells[1].lower() == "vnnlib"


def read_instances(path: Path | str, timeout: float | None = None) -> list[BatchTask]:
    """The instances of a VNN-COMP ``instances.csv`` (``onnx,vnnlib,timeout``; an
    ``onnx,vnnlib,...`` header line is skipped). ``timeout`` overrides the CSV's (the
    column may then be missing). Every referenced file must exist: a run of hours should
    not stop at its 100th instance for a typo."""
    path = Path(path)
    if timeout is not None and not timeout > 0:
        raise InputFileError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    tasks: list[BatchTask] = []
    for line, cells in _rows(path):
        if not tasks and _is_header(cells):
            continue
        where = f"{path}:{line}"
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise InputFileError(f"{where}: expected 'onnx,vnnlib,timeout', got "
                                 f"{len(cells)} column(s)")
        if len(cells) == 2 and timeout is None:
            raise InputFileError(f"{where}: no timeout column (give --timeout)")
        seconds = timeout if timeout is not None else _timeout(cells[2], where)
        onnx_path, vnnlib_path = path.parent / cells[0], path.parent / cells[1]
        for file in (onnx_path, vnnlib_path):
            if not file.is_file():
                raise InputFileError(f"{where}: {file} not found")
        tasks.append(BatchTask(len(tasks), cells[0], cells[1], onnx_path, vnnlib_path,
                               seconds, line))
    if not tasks:
        raise InputFileError(f"{path}: no instances")
    return tasks


def read_expected(path: Path | str) -> dict[tuple[str, str], str]:
    """Known answers ``(onnx, vnnlib) -> holds | violated`` from an ``onnx,vnnlib,expected``
    CSV (``sat``/``unsat`` accepted; ``unknown``, ``timeout``, ``error`` or an empty cell
    mean no known answer; any other word, or two different answers for one pair, is an
    error naming the line)."""
    path = Path(path)
    out: dict[tuple[str, str], str] = {}
    for line, cells in _rows(path):
        if _is_header(cells):
            continue
        where = f"{path}:{line}"
        if len(cells) < 3:
            raise InputFileError(f"{where}: expected 'onnx,vnnlib,expected'")
        text = cells[2].lower()
        if text in NO_ANSWER_WORDS:
            continue
        word = EXPECTED_WORDS.get(text)
        if word is None:
            raise InputFileError(f"{where}: unknown answer '{cells[2]}' (expected holds, "
                                 "violated, sat, unsat or unknown)")
        key = (cells[0], cells[1])
        if out.get(key, word) != word:
            raise InputFileError(f"{where}: {cells[0]},{cells[1]} has two different "
                                 "answers")
        out[key] = word
    return out


def _parts(name: str) -> tuple[str, ...]:
    """The components of a path as written, without '.' entries."""
    return tuple(p for p in Path(name).parts if p != ".")


def _same_file(a: str, b: str) -> bool:
    """Whether two spellings may name the same file: one's components end the other's
    (``acasxu/net.onnx`` and ``/data/acasxu/net.onnx``; not ``mnist/net.onnx`` and
    ``cifar/net.onnx``)."""
    pa, pb = _parts(a), _parts(b)
    n = min(len(pa), len(pb))
    return n > 0 and pa[-n:] == pb[-n:]


def expected_answer(expected: dict[tuple[str, str], str], task: BatchTask) -> str | None:
    """The known answer of ``task``: by the names as written, else from the one known pair
    whose paths match the task's up to a leading folder prefix (see :func:`_same_file`;
    an instances CSV and an answers CSV may root their paths differently). Several
    matching pairs: no known answer."""
    if (task.onnx, task.vnnlib) in expected:
        return expected[(task.onnx, task.vnnlib)]
    found = [word for (onnx, vnnlib), word in expected.items()
             if _same_file(onnx, task.onnx) and _same_file(vnnlib, task.vnnlib)]
    return found[0] if len(found) == 1 else None


def judge(outcome: BatchOutcome, expected: str | None) -> str:
    """correct / wrong (a solved verdict against the known answer) / unsolved / unchecked
    (solved, no known answer)."""
    if outcome.verdict not in SOLVED:
        return "unsolved"
    if expected is None:
        return "unchecked"
    return "correct" if outcome.verdict == expected else "wrong"


# --------------------------------------------------------------------------- worker

def _single_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def engine_label(engine: str, split: str = "auto") -> str:
    """The engine as the results table records it and ``--resume`` matches it: the
    engine's name, with ``:input`` or ``:relu`` when ``--split`` overrides bab's choice."""
    return engine if split == "auto" else f"{engine}:{split}"


def _verify_options(label: str, timeout: float):
    """The VerifyOptions an :func:`engine_label` stands for."""
    from verirepair.verify.bab import BabOptions
    from verirepair.verify.engine import VerifyOptions

    engine, _, split = label.partition(":")
    return VerifyOptions(timeout=timeout, engine=engine, bab=BabOptions(split=split or "auto"))


def _run_one(onnx_path: str, vnnlib_path: str, timeout: float, engine: str) -> dict:
    """Load and verify one instance with the engine :func:`engine_label` names; the reply
    the parent turns into a BatchOutcome."""
    from verirepair.errors import VerirepairError
    from verirepair.network import load_network
    from verirepair.report import vnncomp_text
    from verirepair.spec import load_spec
    from verirepair.verify.engine import verify

    start = time.perf_counter()
    reply: dict = {}
    try:
        network = load_network(onnx_path)
        spec = load_spec(vnnlib_path)
        result = verify(network, spec, _verify_options(engine, timeout))
        reply.update(verdict=result.verdict.value, reason=result.reason or "",
                     boxes=int(result.stats.boxes), result_text=vnncomp_text(result))
        cex = result.counterexample
        if cex is not None:
            reply["cex"] = {"x": [float(v) for v in cex.x.reshape(-1)],
                            "y": [float(v) for v in cex.y.reshape(-1)],
                            "case": int(cex.case_index), "disjunct": int(cex.disjunct_index)}
    except VerirepairError as exc:
        reply.update(verdict="error", error_kind="input", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - one instance must not end the run
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        reply.update(verdict="error", error_kind="internal",
                     reason=f"{type(exc).__name__}: {exc}{where}")
    reply["seconds"] = time.perf_counter() - start
    return reply


def _worker_main(conn, single_thread: bool, engine: str) -> None:
    """Worker process: import once, then verify the instances the parent sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if single_thread:
        _single_thread()
    try:
        import torch

        if single_thread:
            torch.set_num_threads(1)
        importlib.import_module("verirepair.verify.engine")  # import cost paid at start
    except BaseException as exc:  # noqa: BLE001 - report and die
        conn.send({"fatal": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"ready": os.getpid()})
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, onnx_path, vnnlib_path, timeout = task
        reply = _run_one(onnx_path, vnnlib_path, timeout, engine)
        reply["task"] = index
        conn.send(reply)


class WorkerStartError(RuntimeError):
    """A worker process could not start (import failure): nothing can run."""


class _Worker:
    def __init__(self, ctx, single_thread: bool, engine: str) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, single_thread, engine),
                                daemon=True)
        # The child inherits an ignored SIGINT, so Ctrl-C during its imports (before it
        # ignores SIGINT itself) cannot print its traceback; the parent handles Ctrl-C.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        child.close()
        self.started = time.perf_counter()
        self.ready = False
        self.task: BatchTask | None = None
        self.dispatched = 0.0

    def stuck_at_start(self, now: float) -> bool:
        return not self.ready and now - self.started > START_TIMEOUT_S

    def send(self, task: BatchTask) -> None:
        self.task = task
        self.dispatched = time.perf_counter()
        self.conn.send((task.index, str(task.onnx_path), str(task.vnnlib_path), task.timeout))

    def overdue(self, now: float) -> bool:
        return (self.task is not None and now - self.dispatched
                > self.task.timeout * HARD_KILL_FACTOR + HARD_KILL_GRACE_S)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


def _outcome(task: BatchTask, msg: dict) -> BatchOutcome:
    return BatchOutcome(task, msg["verdict"], float(msg["seconds"]), msg.get("boxes"),
                        msg.get("reason", ""), msg.get("cex"), msg.get("result_text", ""),
                        msg.get("error_kind", ""))


def _lost(task: BatchTask, elapsed: float, died: bool, exitcode) -> BatchOutcome:
    """The outcome of an instance whose worker died or was killed for overrunning."""
    if died:
        return BatchOutcome(task, "error", elapsed, reason="worker process died "
                            f"(exit code {exitcode})", error_kind="internal")
    return BatchOutcome(task, "timeout", elapsed, reason=f"killed after {elapsed:.0f} s: "
                        f"the verifier overran its {task.timeout:g} s deadline",
                        result_text="timeout\n")


@dataclass
class _Pool:
    """The parent's side of :func:`run_pool`."""

    tasks: list[BatchTask]
    jobs: int
    on_done: Callable[[BatchOutcome], None]
    engine: str
    workers: list[_Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.single = self.jobs > 1
        self.queue = list(self.tasks)
        self.remaining = len(self.queue)
        self.workers = [self._new() for _ in range(min(self.jobs, len(self.queue)))]

    def _new(self) -> _Worker:
        return _Worker(self.ctx, self.single, self.engine)

    def _handle(self, w: _Worker, msg: dict) -> None:
        if "fatal" in msg:
            raise WorkerStartError(f"a worker process failed to start: {msg['fatal']}")
        if "ready" in msg:
            w.ready = True
            return
        task, w.task = w.task, None
        if task is None or msg.get("task") != task.index:
            raise RuntimeError(f"batch: a worker answered for task {msg.get('task')} "
                               f"while running {None if task is None else task.index}")
        self.remaining -= 1
        self.on_done(_outcome(task, msg))

    def _receive(self, w: _Worker) -> None:
        """Handle every message already waiting on ``w``'s pipe."""
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return
            self._handle(w, msg)

    def _replace_broken(self) -> None:
        now = time.perf_counter()
        for i, w in enumerate(self.workers):
            dead = not w.proc.is_alive()
            if dead:
                self._receive(w)  # a reply may have arrived just before the exit
            if w.stuck_at_start(now):
                w.kill()
                raise WorkerStartError(f"worker {w.proc.pid} did not start within "
                                       f"{START_TIMEOUT_S:g} s")
            if not (dead or w.overdue(now)):
                continue
            w.kill()
            if not w.ready:
                raise WorkerStartError(f"worker {w.proc.pid} died at start (exit code "
                                       f"{w.proc.exitcode})")
            if w.task is not None:
                task, w.task = w.task, None
                self.remaining -= 1
                self.on_done(_lost(task, now - w.dispatched, dead, w.proc.exitcode))
            if self.remaining:
                self.workers[i] = self._new()

    def run(self) -> None:
        try:
            while self.remaining:
                for w in self.workers:
                    if w.ready and w.task is None and self.queue:
                        w.send(self.queue.pop(0))
                mpc.wait([w.conn for w in self.workers]
                         + [w.proc.sentinel for w in self.workers], timeout=1.0)
                for w in self.workers:
                    self._receive(w)
                self._replace_broken()
        finally:
            for w in self.workers:
                if w.task is None and w.proc.is_alive():
                    w.stop()
                else:
                    w.kill()


def run_pool(tasks: list[BatchTask], jobs: int, on_done: Callable[[BatchOutcome], None],
             engine: str = "bab") -> None:
    """Run every task on ``jobs`` worker processes, in the given order; ``on_done`` is
    called in the parent as each finishes. Raises :class:`WorkerStartError` if a worker
    cannot start."""
    if tasks:
        _Pool(tasks, max(1, jobs), on_done, engine).run()


# --------------------------------------------------------------------------- output

CSV_COLUMNS = ["onnx", "vnnlib", "timeout", "verdict", "seconds", "boxes", "reason",
               "engine", "digest"]


def instance_digest(task: BatchTask) -> str:
    """A short SHA-256 of the instance's model and property bytes: ``--resume`` keeps a
    row only for the very files it was computed from."""
    h = hashlib.sha256()
    for path in (task.onnx_path, task.vnnlib_path):
        try:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
        h.update(b"\0")
    return h.hexdigest()[:16]


def sound_cell(verdict: str, engine_sound: bool) -> str:
    """The ``sound`` column: "no" for a 'holds' of an engine that is not sound (not a
    proof), "yes" for any other 'holds' and for 'violated' (its counterexample was
    confirmed in onnxruntime), empty for answers that decide nothing."""
    if verdict == "holds":
        return "yes" if engine_sound else "no"
    return "yes" if verdict == "violated" else ""


def results_csv(outcomes: list[BatchOutcome], with_expected: dict | None,
                engine_sound: bool = True) -> str:
    """The results table (instance order): :data:`CSV_COLUMNS`, then ``sound`` (see
    :func:`sound_cell`; not required by ``--resume``, so older tables stay readable), then
    ``expected`` and ``status`` when known answers were given."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + ["sound"]
               + (["expected", "status"] if with_expected is not None else []))
    for o in sorted(outcomes, key=lambda o: o.task.index):
        row = [o.task.onnx, o.task.vnnlib, f"{o.task.timeout:g}", o.verdict,
               f"{o.seconds:.3f}", "" if o.boxes is None else o.boxes, o.reason, o.engine,
               o.digest, sound_cell(o.verdict, engine_sound)]
        if with_expected is not None:
            row += [expected_answer(with_expected, o.task) or "", o.status]
        w.writerow(row)
    return buf.getvalue()


# The VNN-COMP word a kept verdict's result file must start with.
RESULT_WORDS = {"holds": "unsat", "violated": "sat", "unknown": "unknown",
                "timeout": "timeout"}


@dataclass(frozen=True)
class Earlier:
    """What ``--resume`` found in an earlier results CSV: the outcomes it keeps (per task
    index) and how many earlier rows matched no instance of this run."""

    kept: dict[int, BatchOutcome]
    rows: int
    unmatched: int


def earlier_outcomes(csv_path: Path, tasks: list[BatchTask], engine: str,
                     digests: dict[int, str], result_files: dict[int, Path] | None
                     ) -> Earlier:
    """What ``--resume`` keeps from an earlier run's results CSV: per task index, the row
    with the same onnx, vnnlib, timeout, engine and file digest whose verdict is not
    ``error``; when result files are written, only if the task's result file says that
    verdict (a ``sat`` file carries the counterexample, which the CSV does not)."""
    if not csv_path.is_file():
        return Earlier({}, 0, 0)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{csv_path}: cannot read the earlier results: {exc}") from None
    if rows and not set(CSV_COLUMNS) <= set(rows[0]):
        raise InputFileError(f"{csv_path}: not a results CSV of this `verirepair batch` "
                             f"(expected the columns {','.join(CSV_COLUMNS)})")
    by_key = {(r["onnx"], r["vnnlib"], r["timeout"], r["engine"], r["digest"]): r
              for r in rows}
    kept: dict[int, BatchOutcome] = {}
    used: set[tuple] = set()
    for task in tasks:
        key = (task.onnx, task.vnnlib, f"{task.timeout:g}", engine, digests[task.index])
        row = by_key.get(key)
        if row is None:
            continue
        used.add(key)
        outcome = _kept(row, task, result_files)
        if outcome is not None:
            kept[task.index] = outcome
    return Earlier(kept, len(rows), len(set(by_key) - used))


def _kept(row: dict, task: BatchTask, result_files: dict[int, Path] | None
          ) -> BatchOutcome | None:
    if row["verdict"] not in RESULT_WORDS:
        return None
    text = _kept_result_text(row["verdict"], task, result_files)
    if text is None:
        return None
    try:
        seconds = float(row["seconds"])
        boxes = int(row["boxes"]) if row["boxes"] else None
    except (TypeError, ValueError):
        return None
    return BatchOutcome(task, row["verdict"], seconds, boxes, row["reason"] or "",
                        result_text=text, engine=row["engine"], digest=row["digest"])


def _kept_result_text(verdict: str, task: BatchTask,
                      result_files: dict[int, Path] | None) -> str | None:
    """The result file text of a kept verdict; None when the file does not say it."""
    word = RESULT_WORDS[verdict]
    if result_files is None:
        return "" if verdict == "violated" else word + "\n"
    try:
        text = result_files[task.index].read_text(encoding="utf-8")
    except OSError:
        return None
    if text.split("\n", 1)[0].strip() != word:
        return None
    if verdict == "violated" and not counterexample_stands(task, text):
        return None
    return text


def counterexample_stands(task: BatchTask, text: str) -> bool:
    """Whether a ``sat`` result file's assignment is a counterexample of the task: X
    float32-exact and in one of the property's boxes, onnxruntime's output on the model
    file equal to the file's Y and unsafe (``--resume`` with result files keeps no
    counterexample on trust)."""
    import numpy as np

    from verirepair.network import run_model_file
    from verirepair.report import parse_assignment
    from verirepair.spec import load_spec
    from verirepair.verify.confirm import satisfied_disjunct

    parsed = parse_assignment(text)
    if parsed is None:
        return False
    x, y = parsed
    try:
        spec = load_spec(task.vnnlib_path)
        if x.shape != (spec.n_inputs,) or y.shape != (spec.n_outputs,) \
                or not np.array_equal(x.astype(np.float32).astype(np.float64), x):
            return False
        y_ort = run_model_file(task.onnx_path, x).astype(np.float64)
    except Exception:  # noqa: BLE001 - anything unreadable or failing: run it again
        return False
    return y_ort.shape == y.shape and bool(np.array_equal(y_ort, y)) and any(
        case.box.contains(x) and satisfied_disjunct(case, y_ort) is not None
        for case in spec.cases)


def result_file_names(tasks: list[BatchTask]) -> dict[int, str]:
    """A VNN-COMP result file name per task, ``<onnx stem>_<vnnlib stem>.txt``. Names that
    different instances share get a short hash of the paths as written (not the row's
    position: a reordered CSV must not hand one instance another's file); the same
    instance listed twice shares its file."""
    def stem(name: str) -> str:
        base = Path(name).name
        for suffix in (".gz", ".onnx", ".vnnlib"):
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        return base

    names = {t.index: f"{stem(t.onnx)}_{stem(t.vnnlib)}" for t in tasks}
    owners: dict[str, set[tuple[str, str]]] = {}
    for t in tasks:
        owners.setdefault(names[t.index], set()).add((t.onnx, t.vnnlib))
    out: dict[int, str] = {}
    for t in tasks:
        name = names[t.index]
        if len(owners[name]) > 1:
            tag = hashlib.sha256(f"{t.onnx}\n{t.vnnlib}".encode()).hexdigest()[:8]
            name = f"{name}_{tag}"
        out[t.index] = name + ".txt"
    return out
