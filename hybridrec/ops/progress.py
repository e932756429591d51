"""A progress line at least every ``interval`` seconds while a run works, never a flood.

A long Spark action (encoding texts, a weight grid, a write) logs nothing until it ends; an
operator watching the log cannot tell a slow stage from a hung one. While a run holds the
warehouse, a daemon thread checks how long the log has been quiet and, past ``interval``
seconds, logs the current stage's elapsed time and what Spark is doing (active stages, tasks
done of total), with an estimate of the work items done when the job said how many there are
(``working_on``). Any other log line resets the clock, so a chatty stage gets no extra lines.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from pyspark import SparkContext

log = logging.getLogger("hybridrec.progress")

_current: dict[str, object] = {}
# name: what progress lines call it; started: its monotonic start; stage: the bare name of the
# stage running now, None between stages. Only ever updated whole (another thread reads it).
_stage: dict[str, object] = {"stage": None}


class _LastRecord(logging.Handler):
    """Remembers when anything was last logged (from any logger, any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        self.at = time.monotonic()


@contextlib.contextmanager
def working_on(what: str, total: int | None = None, unit: str = "") -> Iterator[None]:
    """Say what a long Spark action does, e.g. ``with working_on("encoding", 10721, "texts")``:
    progress lines meanwhile estimate how many of them are done from the tasks finished."""
    _current.update(what=what, total=total, unit=unit)
    try:
        yield
    finally:
        _current.clear()


@contextlib.contextmanager
def heartbeat(sc: SparkContext, label: str, interval: float = 20.0) -> Iterator[None]:
    """Log progress whenever the log has been quiet for ``interval`` seconds: of the stage
    ``in_stage`` names, else of ``label`` (a run between its stages: the lock, the catalog)."""
    last = _LastRecord()
    root = logging.getLogger()
    root.addHandler(last)
    stop = threading.Event()
    started = time.monotonic()
    _current.clear()
    _stage.update(name=label, started=started, stage=None)

    def beat() -> None:
        while not stop.wait(min(2.0, interval / 4)):
            if time.monotonic() - last.at >= interval and not _report(sc):
                return

    thread = threading.Thread(target=beat, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        root.removeHandler(last)
        _current.clear()


def _report(sc: SparkContext) -> bool:
    """Log one progress line; False when Spark cannot be asked (its JVM is gone, as after a kill
    of the process group): progress lines end there, quietly, and the run goes on or stops."""
    try:
        text = describe(sc, _stage["name"], time.monotonic() - _stage["started"])
    except Exception:
        return False
    log.info("%s", text)
    return True


@contextlib.contextmanager
def in_stage(name: str) -> Iterator[None]:
    """Progress lines name stage ``name`` and count its seconds, until it ends."""
    before = dict(_stage)
    _stage.update(name=f"stage {name}", started=time.monotonic(), stage=name)
    try:
        yield
    finally:
        _stage.update(before)


def current_stage() -> str | None:
    """The stage running now (``in_stage``), or None between stages and outside a run."""
    return _stage.get("stage")


def describe(sc: SparkContext, stage: str, elapsed: float) -> str:
    """``stage embed: 75s in; encoding: Spark stage 14: 5 of 11 tasks done (~4873 of 10721
    texts)``; without an active Spark stage, the driver is working (planning, a catalog call)."""
    text = f"{stage}: {elapsed:.0f}s in"
    what = _current.get("what")
    if what:
        text += f"; {what}"
    tracker = sc.statusTracker()
    infos = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info]
    if not infos:
        return text + "; no Spark stage running (driver work)"
    done = sum(info.numCompletedTasks for info in infos)
    tasks = sum(info.numTasks for info in infos)
    ids = ",".join(str(info.stageId) for info in sorted(infos, key=lambda i: i.stageId))
    text += f"; Spark stage {ids}: {done} of {tasks} tasks done"
    total = _current.get("total")
    if total and tasks:
        unit = f" {_current['unit']}" if _current.get("unit") else ""
        text += f" (~{int(total * done / tasks)} of {total}{unit})"
    return text
