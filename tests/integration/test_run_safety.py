"""Runs as an operator meets them: pipelines killed with SIGKILL mid-write and mid-stage, a
second pipeline on a busy warehouse, a resume of an older run after all that, and a pipeline
stopped by SIGTERM to its process group (one line, status 143, marked failed). Every
pipeline is its own process (the real CLI), and tables are read back through the persistent
catalog from a fresh process, as an analyst would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hybridrec.ops.session import SHORT_RUN_SETTINGS
from hybridrec.ops.tracking import ROLE_TAG, RUN_ID_TAG, SERVED_RUN_TAG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "source.sample.n_users=60",
    "source.sample.n_items=40",
    "source.sample.events_per_user=6",
    "als.max_iter=3",
    "als.grid.rank=[4]",
    "als.grid.reg_param=[0.1]",
    "als.grid.alpha=[1.0]",
    "score.weight_grid_step=0.5",
    "score.recent_sharpness_grid=[1.0]",
    "score.k=5",
    "evaluate.k=5",
    "score.debias_grid=[0.0, 1.0]",
    "score.next_share_grid=[0.0, 0.1]",
    "evaluate.ease.l2_grid=[10.0]",
    "evaluate.item_knn.neighbours_grid=[10]",
    "embed.text_neighbours=10",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    # These runs test kills and locks, not the picks: no early fold (the end-to-end test has it).
    "score.early_target=never",
    "ranker.enabled=false",
    *SHORT_RUN_SETTINGS,
]
RUNS = ("P1", "P2", "P3", "P4")
TABLES = (
    "interactions",
    "items",
    "rejects",
    "text_embeddings",
    "item_embeddings",
    "user_embeddings",
    "item_text_neighbours",
    "als_user_factors",
    "als_item_factors",
    "item_neighbours",
    "item_transitions",
    "recommendations",
    "metrics",
)


def _settings(work: Path) -> list[str]:
    return [f"run.work_dir={work}", *TINY]


def _cli(work: Path, *args: str) -> list[str]:
    command = [sys.executable, "-m", "pipelines.cli", "run", "--conf", "conf/local.yaml"]
    for setting in _settings(work):
        command += ["--set", setting]
    return [*command, *args]


def _environment() -> dict[str, str]:
    # An earlier in-process run's mlflow.set_tracking_uri exported its store to this variable.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }


def _run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=timeout
    )


def _start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, env=_environment(), stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _wait_for(condition, what: str, timeout: float = 300, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _read_back(work: Path, run_id: str, engine: str) -> dict:
    """Counts of ``run_id`` in every table and the status of every run, in one statement from a
    fresh process: ``hybridrec sql`` on DuckDB (the published snapshots, a second) or on Spark
    (the persistent catalog, as an analyst's BI tool would)."""
    columns = [
        f"(SELECT count(*) FROM hybridrec.{t} WHERE run_id = '{run_id}') AS {t}" for t in TABLES
    ]
    columns += [
        f"(SELECT max(status) FROM hybridrec.runs WHERE run_id = '{run}') AS status_{run}"
        for run in RUNS
    ]
    columns.append("(SELECT count(DISTINCT run_id) FROM hybridrec.runs) AS runs")
    command = [sys.executable, "-m", "pipelines.cli", "sql", f"SELECT {', '.join(columns)}"]
    command += ["--conf", "conf/local.yaml", "--engine", engine, "--format", "json"]
    for setting in _settings(work):
        command += ["--set", setting]
    done = _run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"answered by {engine}" in done.stderr, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    runs = {run: row[f"status_{run}"] for run in RUNS if row[f"status_{run}"] is not None}
    assert row["runs"] == len(runs), row  # no run but these
    return {"counts": {t: row[t] for t in TABLES}, "runs": runs}


def _mlflow_runs(db: Path) -> int:
    """Runs in an MLflow SQLite store that another process is still writing."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as store:
            return store.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("safety")


def test_kills_and_a_busy_warehouse_leave_the_complete_run_whole(work, tmp_path):
    first = _run(_cli(work, "--run-id", "P1"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = _read_back(work, "P1", "duckdb")
    assert all(before["counts"][t] > 0 for t in TABLES if t != "rejects"), before
    assert before["runs"] == {"P1": "complete"}

    # SIGKILL while interactions is being written.
    staging = work / "warehouse" / "hybridrec.db" / "_staging" / "interactions"
    killed_in_write = _start(_cli(work, "--run-id", "P2"), tmp_path / "p2.log")
    _wait_for(lambda: staging.exists() and any(staging.iterdir()), "the interactions write")
    killed_in_write.send_signal(signal.SIGKILL)
    killed_in_write.wait()
    assert any(staging.iterdir()), "the kill came after the write had been published"

    # A run killed in the middle of a stage, and a second pipeline refused while it runs.
    log = tmp_path / "p3.log"
    killed_in_stage = _start(_cli(work, "--run-id", "P3"), log)
    _wait_for(lambda: "stage embed: starting" in log.read_text(), "stage embed", every=0.2)
    refused = _run(_cli(work, "--run-id", "P4"), timeout=120)
    assert refused.returncode == 3, refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert "in use by run P3" in message
    assert f"pid {killed_in_stage.pid}" in message
    assert "started 20" in message
    os.kill(killed_in_stage.pid, signal.SIGKILL)
    killed_in_stage.wait()

    after_kills = _read_back(work, "P1", "duckdb")
    assert after_kills["counts"] == before["counts"]

    # Resume the older run: it reads its own snapshots (evaluate reads score's and all before)
    # whatever the killed runs did.
    resumed = _run(_cli(work, "--run-id", "P1", "--stages", "evaluate"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "took over the lock of run P3" in resumed.stderr
    final = _read_back(work, "P1", "spark")
    assert final["counts"] == before["counts"]
    assert final["runs"]["P1"] == "complete"
    assert final["runs"]["P2"] == "failed"
    assert final["runs"]["P3"] == "failed"
    assert "P4" not in final["runs"]
    store = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    statuses = {
        r.data.tags[RUN_ID_TAG]: r.info.status
        for r in client.search_runs(
            [client.get_experiment_by_name("hybridrec").experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'pipeline'",
        )
    }
    assert statuses == {"P1": "FINISHED", "P2": "FAILED", "P3": "FAILED"}
    # The resumed evaluate registered the served model again: its version replaced the first.
    versions = client.search_model_versions("name = 'hybridrec'")
    assert [v.tags.get(SERVED_RUN_TAG) for v in versions] == ["P1"], versions
    assert str(versions[0].version) == "2"
    # The catalog and its logs live under the work dir, never in the checkout.
    assert not [p for p in ("metastore_db", "derby.log", "spark-warehouse") if (REPO / p).exists()]


def test_sigterm_to_the_process_group_stops_the_run_with_one_line(tmp_path):
    """What ``timeout`` and Airflow do: SIGTERM to every process of the group, the JVM's too."""
    import pandas as pd

    work = tmp_path / "work"
    log = tmp_path / "stop.log"
    run = subprocess.Popen(
        _cli(work, "--run-id", "T1"),
        cwd=REPO,
        env=_environment(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so the signal reaches no test process
    )
    _wait_for(lambda: "stage ingest: starting" in log.read_text(), "stage ingest", every=0.2)
    # Its parent and job runs in MLflow, then into the stage's Spark work.
    _wait_for(lambda: _mlflow_runs(work / "mlflow.db") >= 2, "the MLflow runs", every=0.2)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGTERM)
    status = run.wait(timeout=120)

    output = log.read_text()
    stops = [line for line in output.splitlines() if "stopped by signal" in line]
    assert status == 143, output[-3000:]
    assert stops == ["hybridrec: run T1 stopped by signal 15 in stage ingest"], output[-3000:]
    assert output.rstrip().endswith(stops[0])
    assert "Traceback" not in output and "py4j" not in output.lower(), output[-3000:]
    # Marked failed in the runs table and in MLflow (read without Spark: seconds, not a JVM).
    runs = pd.read_parquet(work / "warehouse" / "hybridrec.db" / "runs" / "run_id=T1")
    assert runs["status"].tolist() == ["failed"]
    assert runs["message"].tolist() == ["stopped by signal 15 in stage ingest"]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("hybridrec").experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'pipeline'",
    )
    assert parent.info.status == "FAILED"
