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


def test_result_file_names_are_unique() -> None:
    tasks = [_task(0, "n/a.onnx", "p/prop_1.vnnlib"), _task(1, "a.onnx.gz", "prop_2.vnnlib"),
             _task(2, "a.onnx", "prop_2.vnnlib.gz")]
    assert result_file_names(tasks) == {0: "a_prop_1.txt", 1: "a_prop_2_1.txt",
                                        2: "a_prop_2_2.txt"}
    # a suffixed name must not take the name of another instance
    clash = [_task(0, "x.onnx", "y.vnnlib"), _task(1, "x.onnx", "y.vnnlib"),
             _task(2, "x.onnx", "y_0.vnnlib")]
    names = result_file_names(clash)
    assert len(set(names.values())) == 3 and names[2] == "x_y_0.txt"


def test_results_table_is_in_instance_order_with_judgement_columns() -> None:
    outs = [BatchOutcome(_task(1, "b.onnx"), "violated", 2.5, 7, status="correct"),
            BatchOutcome(_task(0, "a.onnx"), "error", 0.1, reason="bad, \"quoted\" input",
                         error_kind="input", status="unsolved")]
    rows = list(csv.reader(io.StringIO(results_csv(outs, {("b.onnx", "p.vnnlib"): "violated"}))))
    assert rows[0] == ["onnx", "vnnlib", "timeout", "verdict", "seconds", "boxes", "reason",
                       "expected", "status"]
    assert rows[1] == ["a.onnx", "p.vnnlib", "10", "error", "0.100", "",
                       "bad, \"quoted\" input", "", "unsolved"]
    assert rows[2] == ["b.onnx", "p.vnnlib", "10", "violated", "2.500", "7", "", "violated",
                       "correct"]
    plain = list(csv.reader(io.StringIO(results_csv(outs, None))))
    assert plain[0][-1] == "reason" and len(plain) == 3


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
