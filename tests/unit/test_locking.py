"""RunLock: one writer per warehouse, a clear refusal, dead holders taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from hybridrec.store import locking
from hybridrec.store.locking import LOCK_NAME, RunLock, WarehouseBusyError


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    with RunLock(str(tmp_path), "first"), pytest.raises(WarehouseBusyError) as refused:
        RunLock(str(tmp_path), "second").acquire()

    message = str(refused.value)
    assert "run first" in message
    assert f"pid {os.getpid()}" in message
    assert socket.gethostname() in message
    assert "started 20" in message
    assert "run.lock_wait_seconds" in message


def test_the_lock_is_released_and_can_be_taken_again(tmp_path):
    with RunLock(str(tmp_path), "first"):
        pass
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(str(tmp_path), "second"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "second"


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"run_id": "killed", "pid": pid, "host": socket.gethostname(), "started": "x"})
    )
    taken = []

    with RunLock(str(tmp_path), "next", on_take_over=taken.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "next"
    assert [h["run_id"] for h in taken] == ["killed"]


def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_ages(tmp_path):
    record = {"run_id": "remote", "pid": 1, "host": "elsewhere", "started": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "heartbeat_epoch": time.time()}))
    with pytest.raises(WarehouseBusyError, match="remote"):
        RunLock(str(tmp_path), "mine", stale_seconds=60).acquire()

    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "heartbeat_epoch": time.time() - 61}))
    with RunLock(str(tmp_path), "mine", stale_seconds=60):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "mine"


def test_a_waiting_run_gets_the_lock_when_it_is_released(tmp_path):
    first = RunLock(str(tmp_path), "first").acquire()
    threading.Timer(0.5, first.release).start()

    started = time.monotonic()
    with RunLock(str(tmp_path), "second", wait_seconds=10):
        waited = time.monotonic() - started
    assert 0.3 < waited < 9


def test_only_one_of_many_racing_processes_gets_the_lock(tmp_path):
    script = (
        "import sys, time\n"
        "from hybridrec.store.locking import RunLock, WarehouseBusyError\n"
        "try:\n"
        f"    lock = RunLock({str(tmp_path)!r}, sys.argv[1]).acquire()\n"
        "except WarehouseBusyError:\n"
        "    sys.exit(3)\n"
        "time.sleep(2)\n"
        "lock.release()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, f"r{i}"]) for i in range(6)]
    codes = sorted(p.wait() for p in procs)

    assert codes == [0, 3, 3, 3, 3, 3]


# --- a lock file that was never written (a crash or a full disk right after its create) --------


def _lock_file(folder, content: bytes, age: float = 0.0):
    path = folder / LOCK_NAME
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize(
    "content", [b"", b"\x00\xff{not json", b"[1, 2]"], ids=["empty", "garbage", "not a record"]
)
def test_an_old_unreadable_lock_is_taken_over(tmp_path, content, caplog):
    _lock_file(tmp_path, content, age=3600)
    taken = []

    caplog.set_level(logging.WARNING, logger="hybridrec.store.locking")

    with RunLock(str(tmp_path), "next", on_take_over=taken.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "next"

    assert taken == []  # no run id to mark failed
    assert "unreadable" in caplog.text


def test_a_young_empty_lock_is_left_to_its_writer(tmp_path):
    path = _lock_file(tmp_path, b"")

    with pytest.raises(WarehouseBusyError, match="being written"):
        RunLock(str(tmp_path), "mine").acquire()
    assert path.read_bytes() == b""


def test_a_waiting_run_takes_over_an_empty_lock_once_it_has_aged(tmp_path):
    _lock_file(tmp_path, b"")
    started = time.monotonic()

    # stale_seconds 5: a heartbeat every second, so an empty file is abandoned after one.
    with RunLock(str(tmp_path), "mine", wait_seconds=10, stale_seconds=5):
        waited = time.monotonic() - started
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "mine"
    assert 0.9 < waited < 9


def test_an_old_empty_lock_on_a_hadoop_file_system_is_taken_over(spark, tmp_path, monkeypatch):
    # The same folder through Hadoop's FileSystem, as on HDFS.
    monkeypatch.setattr(locking, "_is_local", lambda path: False)
    path = _lock_file(tmp_path, b"", age=3600)

    with RunLock(str(tmp_path), "next", spark=spark):
        assert json.loads(path.read_text())["run_id"] == "next"
        assert (tmp_path / f".{LOCK_NAME}.crc").exists()  # written by Hadoop's local FileSystem
    assert not path.exists()
