"""One writer at a time per warehouse: a lock file naming the run that holds it.

The lock is ``<warehouse>/<database>.db/_lock.json``, created with an exclusive create (so two
processes cannot both succeed) and refreshed by a heartbeat thread. A second run fails at once
with the holder's run id, pid, host and start, or waits up to ``run.lock_wait_seconds``. A lock
whose holder is gone is taken over: on the same host when its pid no longer runs (or runs
another program, told by the process start time), on any host when its heartbeat is older than
``run.lock_stale_seconds``. A lock file that holds no record (empty, or not a JSON object: a
crash or a full disk between its create and its write) is stale once it is older than
``UNWRITTEN_LOCK_SECONDS`` (or one heartbeat interval, a fifth of ``run.lock_stale_seconds``, if
that is shorter): a live holder writes its record right after the create, so a younger one may
still be being written and is left alone. Take-over renames the stale file away first, so of
two processes that find it stale only one wins.

Local folders use the operating system's exclusive create. Other file systems (HDFS) go through
Hadoop's ``create(overwrite=false)``, which is atomic on HDFS; object stores (S3) have no atomic
create: keep ``run.warehouse_dir`` on HDFS or a local/NFS folder there, or run one scheduler.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

LOCK_NAME = "_lock.json"
# A lock file with no record older than this was left by a run that died creating it.
UNWRITTEN_LOCK_SECONDS = 5.0


class WarehouseBusyError(RuntimeError):
    """Another live run holds the warehouse."""


def _process_start(pid: int) -> str | None:
    """The kernel's start tick of ``pid`` (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _LocalFiles:
    def create_exclusive(self, path: str, text: str) -> bool:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return True

    def replace(self, path: str, text: str) -> None:
        temp = f"{path}.{secrets.token_hex(4)}.tmp"
        Path(temp).write_text(text)
        os.replace(temp, path)

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return None

    def mtime(self, path: str) -> float | None:
        """When ``path`` was last written (epoch seconds), or None when it is gone."""
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def rename(self, source: str, target: str) -> bool:
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return False
        return True

    def delete(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


class _HadoopFiles:
    def __init__(self, spark: SparkSession):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        # Resolved once: each dotted step of a py4j name is a round trip and a class lookup
        # over every jar on the classpath.
        self._path_class = self._jvm.org.apache.hadoop.fs.Path

    def _fs(self, path: str):
        hpath = self._path_class(path)
        return hpath.getFileSystem(self._conf), hpath

    def create_exclusive(self, path: str, text: str) -> bool:
        fs, hpath = self._fs(path)
        try:
            stream = fs.create(hpath, False)
        except Exception:  # FileAlreadyExistsException arrives as a Py4JJavaError
            return False
        stream.write(bytearray(text.encode()))
        stream.close()
        return True

    def replace(self, path: str, text: str) -> None:
        fs, hpath = self._fs(path)
        stream = fs.create(hpath, True)
        stream.write(bytearray(text.encode()))
        stream.close()

    def read(self, path: str) -> str | None:
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return None
        stream = fs.open(hpath)
        reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream))
        text = reader.readLine()
        reader.close()
        return text

    def mtime(self, path: str) -> float | None:
        """When ``path`` was last written (epoch seconds), or None when it is gone."""
        fs, hpath = self._fs(path)
        try:
            return fs.getFileStatus(hpath).getModificationTime() / 1000.0
        except Exception:  # FileNotFoundException arrives as a Py4JJavaError
            return None

    def rename(self, source: str, target: str) -> bool:
        fs, src = self._fs(source)
        _, dst = self._fs(target)
        return bool(fs.rename(src, dst))

    def delete(self, path: str) -> None:
        fs, hpath = self._fs(path)
        fs.delete(hpath, False)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


@dataclass
class RunLock:
    """The lock of one warehouse folder, held by ``run_id`` while a stage of it runs."""

    folder: str
    run_id: str
    wait_seconds: float = 0.0
    stale_seconds: float = 300.0
    spark: SparkSession | None = None
    on_take_over: Callable[[dict], None] | None = None
    name: str = LOCK_NAME  # the stream holds a lock of its own: it never blocks the batch
    _token: str = field(default_factory=lambda: secrets.token_hex(8))
    _stop: threading.Event = field(default_factory=threading.Event)
    _heartbeat: threading.Thread | None = None
    _held: dict | None = None

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}"

    @property
    def heartbeat_seconds(self) -> float:
        """How often the holder rewrites its lock file."""
        return max(1.0, self.stale_seconds / 5)

    @property
    def unwritten_seconds(self) -> float:
        """How old a lock file with no record must be before it counts as abandoned: its
        holder writes the record right after the exclusive create, so a few seconds (or one
        heartbeat, if shorter) is ample."""
        return min(UNWRITTEN_LOCK_SECONDS, self.heartbeat_seconds)

    def _files(self):
        if _is_local(self.folder):
            return _LocalFiles()
        if self.spark is None:
            raise ValueError(f"the lock in {self.folder} needs a Spark session for its file system")
        return _HadoopFiles(self.spark)

    def _record(self) -> dict:
        record = dict(self._held or {})
        record.update(
            run_id=self.run_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            process_start=_process_start(os.getpid()),
            token=self._token,
            heartbeat=_now(),
            heartbeat_epoch=time.time(),
        )
        record.setdefault("started", record["heartbeat"])
        return record

    def acquire(self) -> RunLock:
        files = self._files()
        if _is_local(self.folder):
            Path(self.folder.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while True:
            record = self._record()
            if files.create_exclusive(self._local(self.path), json.dumps(record)):
                self._held = record
                break
            holder = self._holder(files)
            if holder is not None and self._stale(holder):
                self._take_over(files, holder)
                continue
            if holder is None:
                age = self._unreadable_age(files)
                if age is not None and age > self.unwritten_seconds:
                    self._take_over(files, None, age)
                    continue
            if time.monotonic() >= deadline:
                raise WarehouseBusyError(_busy_message(self.folder, holder, self.wait_seconds))
            if not announced:
                log.info(
                    "%s; waiting up to %.0fs",
                    _busy_message(self.folder, holder, 0),
                    self.wait_seconds,
                )
                announced = True
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        self._heartbeat = threading.Thread(target=self._beat, name="hybridrec-lock", daemon=True)
        self._heartbeat.start()
        log.info("run %s holds the warehouse lock %s", self.run_id, self.path)
        return self

    def _local(self, path: str) -> str:
        return path.removeprefix("file://") if _is_local(path) else path

    def _holder(self, files) -> dict | None:
        """The holder's record; None when the file is gone or holds no record (yet)."""
        text = files.read(self._local(self.path))
        if not text:
            return None  # being written or just released: look again
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def _unreadable_age(self, files) -> float | None:
        """Seconds since the lock file was last written; None when it is gone (or its file
        system cannot tell), which leaves it alone."""
        written = files.mtime(self._local(self.path))
        return None if written is None else time.time() - written

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            if pid <= 0 or not _alive(pid):
                return True
            started = holder.get("process_start")
            return started is not None and _process_start(pid) not in (None, started)
        return time.time() - float(holder.get("heartbeat_epoch", 0)) > self.stale_seconds

    def _take_over(self, files, holder: dict | None, age: float = 0.0) -> None:
        """Remove a stale lock file; ``holder`` None: it held no record, ``age`` seconds old."""
        aside = f"{self._local(self.path)}.stale-{self._token}"
        # Only one of several processes that found it stale wins this rename.
        if not files.rename(self._local(self.path), aside):
            return
        files.delete(aside)
        if holder is None:
            log.warning(
                "took over the lock %s: the file is empty or unreadable and was last written "
                "%.0fs ago (a run that died, or found the disk full, while creating it)",
                self.path,
                age,
            )
            return  # no run id to mark failed
        log.warning(
            "took over the lock of run %s (pid %s on %s, started %s): its process is gone",
            holder.get("run_id"),
            holder.get("pid"),
            holder.get("host"),
            holder.get("started"),
        )
        if self.on_take_over is not None and holder.get("run_id"):
            self.on_take_over(holder)

    def _beat(self) -> None:
        files = self._files()
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if (self._holder(files) or {}).get("token") != self._token:
                    log.error("the warehouse lock %s is no longer ours", self.path)
                    return
                files.replace(self._local(self.path), json.dumps(self._record()))
            except Exception:  # a missed heartbeat must not kill the run
                log.warning("could not refresh the warehouse lock %s", self.path, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        files = self._files()
        if (self._holder(files) or {}).get("token") == self._token:
            files.delete(self._local(self.path))
        self._held = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _busy_message(folder: str, holder: dict | None, waited: float) -> str:
    if holder is None:
        who = "another run (its lock file is being written)"
    else:
        who = (
            f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, "
            f"started {holder.get('started')}, last heartbeat {holder.get('heartbeat')})"
        )
    waited_text = f" after waiting {waited:.0f}s" if waited else ""
    return (
        f"warehouse {folder} is in use by {who}{waited_text}: wait for it to finish, or pass "
        "--set run.lock_wait_seconds=N to wait up to N seconds"
    )
