"""SIGTERM and SIGINT end a run with one line and 128 + the signal, never a traceback: whatever
the cleanup meets on the way out (a JVM killed with the driver) stays off the console."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from hybridrec.ops import progress, runner
from hybridrec.store.runs import FAILED


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    # A stop mutes logging and stderr and installs signal handlers for the rest of the process.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stderr = sys.stderr
    yield
    runner.forget_stop()
    sys.stderr = stderr
    logging.disable(logging.NOTSET)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _stop_line(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    return (captured.out + captured.err).splitlines()


def test_sigterm_in_a_stage_is_one_line_and_status_143(capsys) -> None:
    with (
        pytest.raises(SystemExit) as stopped,
        runner.exit_on_known_errors("R1"),
        progress.in_stage("embed"),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this

    assert stopped.value.code == 143
    assert _stop_line(capsys) == ["hybridrec: run R1 stopped by signal 15 in stage embed"]


def test_what_the_cleanup_meets_after_a_stop_stays_off_the_console(
    capsys, caplog, monkeypatch
) -> None:
    # Python's own hook, which writes to sys.stderr (pytest's would keep the failure to itself).
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)

    def thread_fails() -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    with (
        pytest.raises(SystemExit) as stopped,
        runner.exit_on_known_errors("R2"),
        progress.in_stage("als"),
    ):
        try:
            runner.on_stop_signal(signal.SIGTERM, None)
        finally:
            # What a dead JVM gives the finally clauses, threads and loggers of the driver.
            logging.getLogger("py4j.clientserver").exception("Error while sending or receiving")
            logging.getLogger("hybridrec").warning("could not mark the run failed")
            worker = threading.Thread(target=thread_fails)
            worker.start()
            worker.join()
            raise RuntimeError("py4j.protocol.Py4JNetworkError: Answer from Java side is empty")

    assert stopped.value.code == 143
    assert _stop_line(capsys) == ["hybridrec: run R2 stopped by signal 15 in stage als"]
    assert not caplog.records


def test_ctrl_c_is_a_sigint_stop_with_status_130(capsys) -> None:
    # Spark's own SIGINT handler raises a bare KeyboardInterrupt: the same stop.
    with pytest.raises(SystemExit) as stopped, runner.exit_on_known_errors("R3"):
        raise KeyboardInterrupt

    assert stopped.value.code == 130
    assert _stop_line(capsys) == [
        "hybridrec: run R3 stopped by signal 2 while no stage was running"
    ]


def test_sigint_through_the_handler_names_the_stage(capsys) -> None:
    with (
        pytest.raises(SystemExit) as stopped,
        runner.exit_on_known_errors("R4"),
        progress.in_stage("score"),
    ):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    assert stopped.value.code == 130
    assert _stop_line(capsys) == ["hybridrec: run R4 stopped by signal 2 in stage score"]


class _History:
    """A ``RunLog`` whose JVM may be gone: ``end`` records the call, or raises like py4j."""

    def __init__(self, jvm_alive: bool) -> None:
        self.ended: list[tuple] = []
        self.jvm_alive = jvm_alive
        self.cancelled = 0
        self.log_level = "WARN"
        context = SimpleNamespace(cancelAllJobs=self._cancel, setLogLevel=self._set_log_level)
        self.warehouse = SimpleNamespace(spark=SimpleNamespace(sparkContext=context))

    def _cancel(self) -> None:
        self._check()
        self.cancelled += 1

    def _set_log_level(self, level: str) -> None:
        self._check()
        self.log_level = level

    def _check(self) -> None:
        if not self.jvm_alive:
            raise ConnectionRefusedError("[Errno 111] Connection refused")

    def end(self, run_id: str, status: str, message: str | None = None) -> None:
        self._check()
        self.ended.append((run_id, status, message))


def test_a_stopped_run_is_marked_failed_with_the_signal_and_stage(capsys) -> None:
    history = _History(jvm_alive=True)
    with progress.in_stage("embed"):
        runner.note_stop(signal.SIGTERM)
        runner._record_failure(history, "R5", KeyboardInterrupt())

    # Its Spark jobs are cancelled first, so that the runs row is not queued behind them, and
    # Spark's log has nothing more to say.
    assert history.cancelled == 1
    assert history.log_level == "OFF"
    assert history.ended == [("R5", FAILED, "stopped by signal 15 in stage embed")]
    assert _stop_line(capsys) == []


def test_a_stopped_run_whose_jvm_is_gone_says_nothing_more(capsys) -> None:
    history = _History(jvm_alive=False)
    runner.note_stop(signal.SIGTERM)
    runner._record_failure(history, "R6", RuntimeError("Py4JNetworkError"))

    assert history.ended == []  # the next lock holder marks it
    assert _stop_line(capsys) == []


def test_no_stop_no_change_a_failing_record_is_still_logged(caplog) -> None:
    history = _History(jvm_alive=False)
    runner._record_failure(history, "R7", ValueError("bad"))

    assert "could not mark run R7 failed" in caplog.text


def test_a_stopped_stream_names_itself_and_its_micro_batch(capsys) -> None:
    runner.name_the_stop("stream S1", step_word="", idle="between micro-batches")
    with (
        pytest.raises(SystemExit) as stopped,
        runner.exit_on_known_errors(),
        progress.in_stage("micro-batch 7"),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    assert stopped.value.code == 143
    assert _stop_line(capsys) == ["hybridrec: stream S1 stopped by signal 15 in micro-batch 7"]


def test_a_stream_stopped_while_waiting_says_so(capsys) -> None:
    runner.name_the_stop("stream S2", step_word="", idle="between micro-batches")
    with pytest.raises(SystemExit) as stopped, runner.exit_on_known_errors():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    assert stopped.value.code == 143
    assert _stop_line(capsys) == ["hybridrec: stream S2 stopped by signal 15 between micro-batches"]
