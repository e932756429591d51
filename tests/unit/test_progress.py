"""Progress lines: one whenever the log goes quiet during a stage, none while it is chatty."""

from __future__ import annotations

import logging
import time

from hybridrec.ops import progress

# A lambda travels to the Python workers by value; a module function would need this module.
_slow = lambda x: __import__("time").sleep(1.5) or x  # noqa: E731


def test_a_quiet_stage_says_what_spark_is_doing(spark, caplog):
    caplog.set_level(logging.INFO, logger="hybridrec.progress")
    with (
        progress.heartbeat(spark.sparkContext, "run R", interval=1.0),
        progress.in_stage("embed"),
        progress.working_on("encoding", 400, "texts"),
    ):
        spark.sparkContext.parallelize(range(4), 4).map(_slow).count()

    lines = [r.getMessage() for r in caplog.records if r.name == "hybridrec.progress"]
    assert lines, "no progress line in a silent stage"
    assert all(line.startswith("stage embed: ") for line in lines)
    assert any("encoding; Spark stage" in line and "of 4 tasks done" in line for line in lines)
    assert any(" of 400 texts)" in line for line in lines)


def test_no_progress_line_while_the_stage_logs_by_itself(spark, caplog):
    caplog.set_level(logging.INFO)
    chatty = logging.getLogger("hybridrec.test")
    with progress.heartbeat(spark.sparkContext, "run R", interval=1.5):
        for _ in range(8):
            chatty.info("working")
            time.sleep(0.4)

    assert not [r for r in caplog.records if r.name == "hybridrec.progress"]


def test_between_stages_the_run_itself_reports(spark, caplog):
    caplog.set_level(logging.INFO, logger="hybridrec.progress")
    with progress.heartbeat(spark.sparkContext, "run R", interval=0.5):
        with progress.in_stage("ingest"):
            pass
        time.sleep(1.5)

    lines = [r.getMessage() for r in caplog.records if r.name == "hybridrec.progress"]
    assert lines and all(line.startswith("run R: ") for line in lines)


def test_progress_stops_with_the_run(spark, caplog):
    caplog.set_level(logging.INFO, logger="hybridrec.progress")
    with progress.heartbeat(spark.sparkContext, "run R", interval=0.5):
        pass
    time.sleep(1.5)

    assert not [r for r in caplog.records if r.name == "hybridrec.progress"]


def test_the_stage_running_now_is_known_and_forgotten_when_it_ends():
    assert progress.current_stage() is None
    with progress.in_stage("als"):
        assert progress.current_stage() == "als"
        with progress.in_stage("score"):
            assert progress.current_stage() == "score"
        assert progress.current_stage() == "als"
    assert progress.current_stage() is None


class _DeadContext:
    """A SparkContext whose JVM is gone: every call into it fails, as py4j's do."""

    def statusTracker(self):
        raise ConnectionRefusedError("[Errno 111] Connection refused")


def test_a_status_call_that_fails_ends_progress_lines_without_a_traceback(monkeypatch, caplog):
    failures = []
    monkeypatch.setattr("threading.excepthook", failures.append)
    caplog.set_level(logging.INFO)
    with progress.heartbeat(_DeadContext(), "run R", interval=0.1):
        time.sleep(0.4)

    assert failures == []  # the thread did not die with an exception
    assert not [r for r in caplog.records if r.exc_info]
