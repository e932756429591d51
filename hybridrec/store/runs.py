"""The ``runs`` table: one row per pipeline run, its status and what it was made from.

A run is ``running`` while a process executes one of its stages, ``incomplete`` between
separately submitted stages, ``complete`` once every stage has succeeded, and ``failed`` when a
stage raised or its process died (found by the next run that takes the warehouse lock). Each
update replaces the run's snapshot of the table, like any other table write. A run id stands
for one configuration: resuming it with other settings that change results is refused, since
its tables would then mix two configurations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

import hybridrec
from hybridrec.config.loader import Config, ConfigError
from hybridrec.safety.redaction import redact_mapping
from hybridrec.store.small_files import SmallFrame
from hybridrec.store.tables import Warehouse

log = logging.getLogger(__name__)

RUNS = "runs"
RUNNING, INCOMPLETE, COMPLETE, FAILED = "running", "incomplete", "complete", "failed"
# Settings that say where and how a run executes, not what it computes: they may change
# between attempts of one run (more memory, another tracking server).
OPERATIONAL_SECTIONS = ("run", "spark", "mlflow")
INPUT_COUNTS = ("behaviour_in", "reviews_in", "items_in", "interactions", "rejects")

SCHEMA = T.StructType(
    [
        T.StructField("status", T.StringType()),
        T.StructField("attempt", T.IntegerType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("attempt_started_at", T.TimestampType()),
        T.StructField("ended_at", T.TimestampType()),
        T.StructField("stages_done", T.StringType()),
        T.StructField("config_hash", T.StringType()),
        T.StructField("config", T.StringType()),
        T.StructField("inputs", T.StringType()),
        T.StructField("input_rows", T.StringType()),
        T.StructField("code_version", T.StringType()),
        T.StructField("host", T.StringType()),
        T.StructField("pid", T.LongType()),
        T.StructField("message", T.StringType()),
    ]
)


def result_settings(cfg: Config) -> dict[str, Any]:
    """Dotted settings that decide a run's results (all but the operational sections)."""
    return {k: v for k, v in cfg.flat().items() if not k.startswith(OPERATIONAL_SECTIONS)}


def config_hash(cfg: Config) -> str:
    text = json.dumps(result_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_paths(cfg: Config) -> dict[str, Any]:
    source = cfg.source
    paths = {"kind": source.kind}
    if source.kind == "amazon":
        paths.update(reviews=source.amazon.reviews_path, meta=source.amazon.meta_path)
    elif source.kind == "movielens":
        paths.update(path=source.movielens.path)
    elif source.kind == "generic":
        paths.update({t: source.generic[t].path for t in ("behaviour", "reviews", "items")})
    return redact_mapping(paths)


def code_version() -> str:
    version = hybridrec.__version__
    repo = Path(hybridrec.__file__).resolve().parents[1]
    if (repo / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return version
        return f"{version}+{sha}"
    return version


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RunLog:
    """Reads and writes the ``runs`` table (call only while holding the warehouse lock)."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        # What this log wrote: the lock makes it the only writer, so each stage's update need
        # not read its own row back from the table.
        self._written: dict[str, dict[str, Any]] = {}

    def get(self, run_id: str) -> dict[str, Any] | None:
        if run_id in self._written:
            return dict(self._written[run_id])
        if not self.warehouse.exists(RUNS, run_id=run_id):
            return None
        row = self.warehouse.read(RUNS, run_id=run_id).first()
        return row.asDict() if row else None

    def all(self) -> list[dict[str, Any]]:
        """Every run's row (one per run: this grows with runs, never with data)."""
        table = self.warehouse.read_all(RUNS)
        return [] if table is None else [r.asDict() for r in table.collect()]

    def _put(self, run_id: str, record: Mapping[str, Any]) -> None:
        row = {field.name: record.get(field.name) for field in SCHEMA.fields}
        # One row, seven times a run: written by the driver, no Spark job.
        self.warehouse.write(SmallFrame(pd.DataFrame([row]), SCHEMA), RUNS, run_id=run_id)
        self._written[run_id] = {**row, "run_id": run_id}

    def begin(self, run_id: str, cfg: Config) -> dict[str, Any]:
        """Start an attempt of ``run_id``; refuse one whose results-deciding settings differ."""
        previous = self.get(run_id)
        digest = config_hash(cfg)
        settings = redact_mapping(result_settings(cfg))
        if previous is not None and previous["config_hash"] != digest:
            before = json.loads(previous["config"] or "{}")
            changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
            raise ConfigError(
                f"--run-id {run_id} was started with other settings ({', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''} differ): a run id stands for one "
                "configuration, so start a new run id"
            )
        now = _now()
        record = dict(previous or {})
        record.update(
            status=RUNNING,
            attempt=(previous or {}).get("attempt", 0) + 1,
            started_at=(previous or {}).get("started_at") or now,
            attempt_started_at=now,
            ended_at=None,
            stages_done=(previous or {}).get("stages_done") or "",
            config_hash=digest,
            config=json.dumps(settings, sort_keys=True, default=str),
            inputs=json.dumps(input_paths(cfg)),
            code_version=code_version(),
            host=socket.gethostname(),
            pid=os.getpid(),
            message=None,
        )
        self._put(run_id, record)
        log.info("run %s: attempt %d started (config %s)", run_id, record["attempt"], digest)
        return record

    def stage_done(
        self, run_id: str, stage: str, results: Mapping[str, float], all_stages: Iterable[str]
    ) -> dict[str, Any]:
        record = self.get(run_id) or {}
        done = [s for s in (record.get("stages_done") or "").split(",") if s]
        if stage == "ingest":
            # A new ingest makes every later stage's snapshot stale until it runs again.
            done = []
            counts = {k: results[k] for k in INPUT_COUNTS if k in results}
            record["input_rows"] = json.dumps(counts)
        if stage not in done:
            done.append(stage)
        record["stages_done"] = ",".join(s for s in all_stages if s in done)
        self._put(run_id, record)
        return record

    def end(self, run_id: str, status: str, message: str | None = None) -> dict[str, Any]:
        record = self.get(run_id) or {}
        record.update(status=status, ended_at=_now(), message=message)
        self._put(run_id, record)
        return record

    def fail_abandoned(self) -> list[str]:
        """Runs left ``running`` by a process that died: nobody else holds the lock now."""
        failed = []
        for record in self.all():
            if record["status"] == RUNNING:
                run_id = record["run_id"]
                self.end(
                    run_id,
                    FAILED,
                    f"process {record['pid']} on {record['host']} ended without finishing "
                    f"(attempt {record['attempt']})",
                )
                failed.append(run_id)
        if failed:
            log.warning("marked runs %s failed: their processes are gone", failed)
        return failed

    def apply_retention(self, keep_runs: int) -> list[str]:
        """Remove every table's snapshots (and report files) of runs older than the ``keep_runs``
        newest complete runs, and staging leftovers. Run records stay, as history."""
        records = self.all()
        complete = sorted(
            (r for r in records if r["status"] == COMPLETE),
            key=lambda r: r["started_at"],
            reverse=True,
        )
        if len(complete) < keep_runs:
            return []
        cutoff = complete[keep_runs - 1]["started_at"]
        expired = {r["run_id"] for r in records if r["started_at"] < cutoff}
        tables = [t for t in self.warehouse.tables() if t != RUNS]
        for table in tables:
            self.warehouse.drop_runs(table, sorted(expired & set(self.warehouse.runs(table))))
        self.warehouse.drop_reports(sorted(expired))
        leftovers = self.warehouse.clear_leftovers()
        if expired or leftovers:
            log.info(
                "retention (run.keep_runs=%d): removed snapshots of %d runs and %d staging folders",
                keep_runs,
                len(expired),
                len(leftovers),
            )
        return sorted(expired)


def newest_complete_run(warehouse: Warehouse) -> str | None:
    """The run id an analyst wants by default."""
    table = warehouse.read_all(RUNS)
    if table is None:
        return None
    row = table.where(F.col("status") == COMPLETE).orderBy(F.col("started_at").desc()).first()
    return row["run_id"] if row else None
