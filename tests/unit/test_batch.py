"""The batch runner's plain-data parts: reading instances and known answers, judging,
naming result files and writing the results table."""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from verirepair import batch
from verirepair.batch import (BatchOutcome, BatchTask, _lost, expected_answer, judge,
                              read_expected, read_instances, result_file_names,
                              results_csv, run_pool)
from verirepair.errors import InputFileError

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "demo_advisory.onnx"
HOLDS = ROOT / "properties" / "demo_near_turn.vnnlib"


def _files(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")


def _task(index: int, onnx: str = "a.onnx", vnnlib: str = "p.vnnlib",
          timeout: float = 10.0) -> BatchTask:
    return BatchTask(index, onnx, vnnlib, Path(onnx), Path(vnnlib), timeout, index + 1)


def test_instances_are_read_relative_to_the_csv_with_their_timeouts(tmp_path: Path) -> None:
    _files(tmp_path, "onnx/a.onnx", "vnnlib/p.vnnlib", "vnnlib/q.vnnlib.gz")
    (tmp_path / "instances.csv").write_text(
        "onnx/a.onnx,vnnlib/p.vnnlib,116\n\n onnx/a.onnx , vnnlib/q.vnnlib.gz ,18.5\n")
    tasks = read_instances(tmp_path / "instances.csv")
    assert [(t.index, t.onnx, t.vnnlib, t.timeout, t.line) for t in tasks] == [
        (0, "onnx/a.onnx", "vnnlib/p.vnnlib", 116.0, 1),
        (1, "onnx/a.onnx", "vnnlib/q.vnnlib.gz", 18.5, 3)]
    assert tasks[1].vnnlib_path == tmp_path / "vnnlib" / "q.vnnlib.gz"


def test_a_header_line_is_skipped_and_the_timeout_can_be_overridden(tmp_path: Path) -> None:
    _files(tmp_path, "a.onnx", "p.vnnlib")
    (tmp_path / "i.csv").write_text("onnx,vnnlib,timeout\na.onnx,p.vnnlib\n")
    with pytest.raises(InputFileError, match=r"i.csv:2: no timeout column"):
        read_instances(tmp_path / "i.csv")
    assert [t.timeout for t in read_instances(tmp_path / "i.csv", timeout=7.0)] == [7.0]


@pytest.mark.parametrize("text, message", [
    ("a.onnx,p.vnnlib,soon\n", r"i.csv:1: timeout 'soon' is not a number"),
    ("a.onnx,p.vnnlib,-3\n", r"i.csv:1: timeout must be a positive number"),
    ("a.onnx,p.vnnlib,nan\n", r"i.csv:1: timeout must be a positive number"),
    ("a.onnx\n", r"i.csv:1: expected 'onnx,vnnlib,timeout', got 1 column"),
    ("a.onnx,p.vnnlib,5,extra\n", r"i.csv:1: expected 'onnx,vnnlib,timeout', got 4"),
    ("a.onnx,p.vnnlib,5\nb.onnx,p.vnnlib,5\n", r"i.csv:2: .*b.onnx not found"),
    ("\n\n", r"i.csv: no instances"),
])
def test_bad_instance_rows_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    _files(tmp_path, "a.onnx", "p.vnnlib")
    (tmp_path / "i.csv").write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_instances(tmp_path / "i.csv")


def test_a_missing_instances_file_and_a_bad_override(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_instances(tmp_path / "none.csv")
    _files(tmp_path, "a.onnx", "p.vnnlib")
    (tmp_path / "i.csv").write_text("a.onnx,p.vnnlib,5\n")
    with pytest.raises(InputFileError, match="--timeout"):
        read_instances(tmp_path / "i.csv", timeout=0.0)


def test_known_answers_accept_both_vocabularies(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("\ufeffonnx,vnnlib,expected\na.onnx,p.vnnlib,unsat\n"
                                    "a.onnx,q.vnnlib,SAT\nb.onnx,p.vnnlib,violated\n"
                                    "b.onnx,q.vnnlib,unknown\nb.onnx,r.vnnlib,timeout\n"
                                    "a.onnx,p.vnnlib,holds\n")
    assert read_expected(tmp_path / "e.csv") == {
        ("a.onnx", "p.vnnlib"): "holds", ("a.onnx", "q.vnnlib"): "violated",
        ("b.onnx", "p.vnnlib"): "violated"}


@pytest.mark.parametrize("text, message", [
    ("a.onnx,p.vnnlib\n", r"e.csv:1: expected 'onnx,vnnlib,expected'"),
    ("a.onnx,p.vnnlib,usnat\n", r"e.csv:1: unknown answer 'usnat'"),
    ("a.onnx,p.vnnlib,sat\na.onnx,p.vnnlib,unsat\n", r"e.csv:2: .* two different answers"),
])
def test_bad_known_answers_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "e.csv").write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_expected(tmp_path / "e.csv")


def test_known_answers_match_up_to_a_folder_prefix_and_only_one_pair() -> None:
    expected = {("x/a.onnx", "x/p.vnnlib"): "holds", ("y/b.onnx", "p.vnnlib"): "holds",
                ("z/b.onnx", "p.vnnlib"): "holds", ("cifar/net.onnx", "q.vnnlib"): "holds"}
    assert expected_answer(expected, _task(0, "x/a.onnx", "x/p.vnnlib")) == "holds"
    assert expected_answer(expected, _task(0, "/data/x/a.onnx", "./x/p.vnnlib")) == "holds"
    assert expected_answer(expected, _task(0, "a.onnx", "p.vnnlib")) == "holds"
    assert expected_answer(expected, _task(0, "b.onnx", "p.vnnlib")) is None  # two pairs
    assert expected_answer(expected, _task(0, "mnist/net.onnx", "q.vnnlib")) is None
    assert expected_answer(expected, _task(0, "c.onnx", "p.vnnlib")) is None


@pytest.mark.parametrize("verdict, expected, status", [
    ("holds", "holds", "correct"), ("violated", "violated", "correct"),
    ("holds", "violated", "wrong"), ("violated", "holds", "wrong"),
    ("holds", None, "unchecked"), ("timeout", "holds", "unsolved"),
    ("unknown", None, "unsolved"), ("error", "violated", "unsolved"),
])
def test_judge(verdict: str, expected: str | None, status: str) -> None:
    assert judge(BatchOutcome(_task(0), verdict, 1.0), expected) == status


def test_result_file_names_are_unique_and_do_not_depend_on_row_order() -> None:
    tasks = [_task(0, "n/a.onnx", "p/prop_1.vnnlib"), _task(1, "a.onnx.gz", "prop_2.vnnlib"),
             _task(2, "a.onnx", "prop_2.vnnlib.gz")]
    names = result_file_names(tasks)
    assert names[0] == "a_prop_1.txt"
    assert names[1] != names[2] and all(names[i].startswith("a_prop_2_") for i in (1, 2))
    # a reordered CSV gives each instance the same file (not its neighbour's)
    swapped = result_file_names([_task(0, "a.onnx", "prop_2.vnnlib.gz"),
                                 _task(1, "a.onnx.gz", "prop_2.vnnlib")])
    assert swapped[0] == names[2] and swapped[1] == names[1]
    # the same instance twice shares its file; another one never gets it
    twice = result_file_names([_task(0, "x.onnx", "y.vnnlib"), _task(1, "x.onnx", "y.vnnlib"),
                               _task(2, "x.onnx", "y_0.vnnlib")])
    assert twice == {0: "x_y.txt", 1: "x_y.txt", 2: "x_y_0.txt"}


def test_results_table_is_in_instance_order_with_judgement_columns() -> None:
    outs = [BatchOutcome(_task(1, "b.onnx"), "violated", 2.5, 7, status="correct",
                         engine="bab", digest="abc"),
            BatchOutcome(_task(0, "a.onnx"), "error", 0.1, reason="bad, \"quoted\" input",
                         error_kind="input", status="unsolved", engine="bab", digest="def")]
    rows = list(csv.reader(io.StringIO(results_csv(outs, {("b.onnx", "p.vnnlib"): "violated"}))))
    assert rows[0] == ["onnx", "vnnlib", "timeout", "verdict", "seconds", "boxes", "reason",
                       "engine", "digest", "sound", "expected", "status"]
    assert rows[1] == ["a.onnx", "p.vnnlib", "10", "error", "0.100", "",
                       "bad, \"quoted\" input", "bab", "def", "", "", "unsolved"]
    assert rows[2] == ["b.onnx", "p.vnnlib", "10", "violated", "2.500", "7", "", "bab", "abc",
                       "yes", "violated", "correct"]
    plain = list(csv.reader(io.StringIO(results_csv(outs, None))))
    assert plain[0][-1] == "sound" and len(plain) == 3


@pytest.mark.parametrize("verdict, engine_sound, cell", [
    ("holds", True, "yes"), ("holds", False, "no"), ("violated", False, "yes"),
    ("unknown", True, ""), ("timeout", False, ""), ("error", True, "")])
def test_the_sound_column_marks_a_holds_that_is_not_a_proof(verdict: str, engine_sound: bool,
                                                            cell: str) -> None:
    out = BatchOutcome(_task(0, "a.onnx"), verdict, 1.0, engine="marabou", digest="d")
    rows = list(csv.reader(io.StringIO(results_csv([out], None, engine_sound))))
    assert dict(zip(rows[0], rows[1]))["sound"] == cell


def test_the_digest_follows_the_file_contents(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"model")
    (tmp_path / "p.vnnlib").write_text("prop")
    task = BatchTask(0, "a.onnx", "p.vnnlib", tmp_path / "a.onnx", tmp_path / "p.vnnlib", 1.0)
    first = batch.instance_digest(task)
    assert first == batch.instance_digest(task) and len(first) == 16
    (tmp_path / "a.onnx").write_bytes(b"model, repaired")
    assert batch.instance_digest(task) != first


def test_a_lost_worker_is_an_internal_error_and_an_overrun_a_timeout() -> None:
    died = _lost(_task(0), 3.0, True, -9)
    assert (died.verdict, died.error_kind, died.result_text) == ("error", "internal", "")
    assert "exit code -9" in died.reason
    late = _lost(_task(0), 50.0, False, None)
    assert (late.verdict, late.error_kind, late.result_text) == ("timeout", "", "timeout\n")


# --------------------------------------------------------------------------- the pool

def _blocking_task(tmp_path: Path, index: int, timeout: float) -> BatchTask:
    """A task whose property is a FIFO nobody writes: its worker blocks reading it."""
    fifo = tmp_path / f"blocks_{index}.vnnlib"
    os.mkfifo(fifo)
    return BatchTask(index, "demo.onnx", fifo.name, MODEL, fifo, timeout, index + 1)


def _demo_task(index: int) -> BatchTask:
    return BatchTask(index, "demo.onnx", HOLDS.name, MODEL, HOLDS, 60.0, index + 1)


def test_an_overrunning_worker_is_killed_and_replaced(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "HARD_KILL_GRACE_S", 0.5)
    outcomes: list[BatchOutcome] = []
    run_pool([_blocking_task(tmp_path, 0, 0.5), _demo_task(1)], 1, outcomes.append)
    by_index = {o.task.index: o for o in outcomes}
    assert by_index[0].verdict == "timeout" and "overran" in by_index[0].reason
    assert by_index[0].result_text == "timeout\n"
    assert by_index[1].verdict == "holds"  # on the replacement worker


def test_a_dead_worker_is_an_internal_error_and_the_run_goes_on(tmp_path: Path) -> None:
    blocked = _blocking_task(tmp_path, 0, 300.0)
    killed = threading.Event()

    def kill_once_reading() -> None:
        """Wait until the worker has opened the FIFO (it blocks there), then kill it."""
        for _ in range(1200):
            try:
                fd = os.open(blocked.vnnlib_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.1)
                continue
            for child in mp.active_children():
                child.kill()
            killed.set()
            time.sleep(1.0)
            os.close(fd)
            return

    watcher = threading.Thread(target=kill_once_reading, daemon=True)
    watcher.start()
    outcomes: list[BatchOutcome] = []
    run_pool([blocked, _demo_task(1)], 1, outcomes.append)
    watcher.join(timeout=5)
    assert killed.is_set()
    by_index = {o.task.index: o for o in outcomes}
    assert (by_index[0].verdict, by_index[0].error_kind) == ("error", "internal")
    assert "died" in by_index[0].reason
    assert by_index[1].verdict == "holds"


# --------------------------------------------------------------------------- --resume

HEADER = ["onnx", "vnnlib", "timeout", "verdict", "seconds", "boxes", "reason", "engine",
          "digest"]


def _earlier(tmp_path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _row(vnnlib: str, verdict: str, timeout: str = "10", engine: str = "bab",
         digest: str = "d", seconds: str = "1.500", boxes: str = "7") -> list[str]:
    return ["a.onnx", vnnlib, timeout, verdict, seconds, boxes, "", engine, digest]


def test_resume_keeps_matching_rows_and_reruns_the_rest(tmp_path: Path) -> None:
    tasks = [_task(0, "a.onnx", "p.vnnlib"), _task(1, "a.onnx", "q.vnnlib"),
             _task(2, "a.onnx", "r.vnnlib"), _task(3, "a.onnx", "s.vnnlib"),
             _task(4, "a.onnx", "t.vnnlib", timeout=20.0), _task(5, "a.onnx", "u.vnnlib"),
             _task(6, "a.onnx", "v.vnnlib")]
    digests = {i: "d" for i in range(7)}
    digests[6] = "changed"  # the file was rewritten since
    path = _earlier(tmp_path, [_row("p.vnnlib", "holds"), _row("q.vnnlib", "violated"),
                               _row("r.vnnlib", "error"), _row("t.vnnlib", "timeout"),
                               _row("u.vnnlib", "holds", engine="z3"),
                               _row("v.vnnlib", "holds"), _row("w.vnnlib", "holds")])
    earlier = batch.earlier_outcomes(path, tasks, "bab", digests, None)
    # r: error, s: not there, t: another timeout, u: another engine, v: other contents
    assert sorted(earlier.kept) == [0, 1]
    kept = earlier.kept[0]
    assert (kept.verdict, kept.seconds, kept.boxes, kept.result_text, kept.engine,
            kept.digest) == ("holds", 1.5, 7, "unsat\n", "bab", "d")
    assert (earlier.rows, earlier.unmatched) == (7, 4)  # t, u, v and w match no instance
    none = batch.earlier_outcomes(tmp_path / "none.csv", tasks, "bab", digests, None)
    assert none.kept == {} and none.rows == 0


def test_resume_with_result_files_keeps_only_verdicts_its_file_says(tmp_path: Path,
                                                                     monkeypatch) -> None:
    # the assignment's re-check in onnxruntime is tested end to end (test_batch_cli)
    monkeypatch.setattr(batch, "counterexample_stands", lambda task, text: True)
    tasks = [_task(0, "a.onnx", "p.vnnlib"), _task(1, "a.onnx", "q.vnnlib"),
             _task(2, "a.onnx", "r.vnnlib")]
    path = _earlier(tmp_path, [_row("p.vnnlib", "holds"), _row("q.vnnlib", "violated"),
                               _row("r.vnnlib", "violated")])
    files = {i: tmp_path / f"{i}.txt" for i in range(3)}
    files[0].write_text("unsat\n")
    files[1].write_text("sat\n((X_0 0.5)\n (Y_0 1.0))\n")
    files[2].write_text("unknown\n")  # placeholder of a run interrupted before the answer
    kept = batch.earlier_outcomes(path, tasks, "bab", {i: "d" for i in range(3)}, files).kept
    assert sorted(kept) == [0, 1]
    assert kept[1].result_text.startswith("sat\n((X_0 0.5)")


def test_resume_reads_judged_tables_and_skips_broken_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text(",".join(HEADER + ["expected", "status"]) + "\n"
                    "a.onnx,p.vnnlib,10,holds,1.0,,,bab,d,holds,correct\n"
                    "a.onnx,q.vnnlib,10,holds\n")  # cut short by hand
    tasks = [_task(0, "a.onnx", "p.vnnlib"), _task(1, "a.onnx", "q.vnnlib")]
    kept = batch.earlier_outcomes(path, tasks, "bab", {0: "d", 1: ""}, None).kept
    assert sorted(kept) == [0]


def test_resume_refuses_a_csv_that_is_not_a_results_table(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("onnx,vnnlib,expected\na.onnx,p.vnnlib,holds\n")
    with pytest.raises(InputFileError, match="not a results CSV"):
        batch.earlier_outcomes(path, [_task(0)], "bab", {0: "d"}, None)


def test_result_file_assignments_parse_back_exactly() -> None:
    from verirepair.report import parse_assignment, vnncomp_text
    from verirepair.verify.types import Counterexample, Result, Verdict

    x = np.array([0.1, -2.5e-8, 3.0], dtype=np.float32)
    y = np.array([1e30, -0.0], dtype=np.float32)
    text = vnncomp_text(Result(Verdict.VIOLATED, Counterexample(x, y, 0, 0)))
    got = parse_assignment(text)
    assert got is not None
    assert np.array_equal(got[0], x.astype(np.float64))
    assert np.array_equal(got[1], y.astype(np.float64))
    for bad in ("unsat\n", "sat\n", "sat\n((X_0 1)\n (X_0 2)\n (Y_0 1))\n",
                "sat\n((X_1 1)\n (Y_0 1))\n", "sat\n((X_0 one)\n (Y_0 1))\n",
                "sat\n((X_0 nan)\n (Y_0 1))\n", "sat\n((X_0 1))\n"):
        assert parse_assignment(bad) is None, bad
