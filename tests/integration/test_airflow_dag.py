"""The Airflow DAG: five spark-submit tasks in pipeline order, sharing conf, overrides and run id.

Needs Airflow 3 and its Spark provider, which live in their own venv (see
pipelines/airflow_dag.py); skipped where they are not installed, e.g. in the project venv.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk")
pytest.importorskip("airflow.providers.apache.spark")

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "pipelines" / "airflow_dag.py"
JOBS = ["ingest", "embed", "als", "score", "evaluate"]
ENV_KEYS = (
    "HYBRIDREC_HOME",
    "HYBRIDREC_CONF",
    "HYBRIDREC_SET",
    "HYBRIDREC_SPARK_CONN_ID",
    "HYBRIDREC_PYTHON",
    "HYBRIDREC_SCHEDULE",
)
AIRFLOW_RUN_ID = "scheduled__2026-11-23T00:00:00+00:00"


def load_dag(monkeypatch: pytest.MonkeyPatch, **env: str):
    """Parse the DAG file afresh with exactly ``env`` as its HYBRIDREC_* settings."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("hybridrec_airflow_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def rendered_args(task) -> list[str]:
    return task.render_template(task.application_args, {"run_id": AIRFLOW_RUN_ID})


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_tasks_run_in_pipeline_order(monkeypatch):
    dag = load_dag(monkeypatch)
    assert dag.dag_id == "hybridrec"
    assert sorted(dag.task_ids) == sorted(JOBS)
    upstream = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert upstream == {
        "ingest": set(),
        "embed": {"ingest"},
        "als": {"ingest"},
        "score": {"embed", "als"},
        "evaluate": {"score"},
    }


def test_each_task_submits_its_own_job_file(monkeypatch):
    dag = load_dag(monkeypatch)
    for job in JOBS:
        application = Path(dag.get_task(job).application)
        assert application == REPO / "jobs" / f"{job}.py"
        assert application.is_file(), f"{application} does not exist"


def test_tasks_share_conf_and_a_sanitised_run_id(monkeypatch):
    dag = load_dag(monkeypatch)
    args = {job: rendered_args(dag.get_task(job)) for job in JOBS}
    run_ids = {job: flag_values(a, "--run-id") for job, a in args.items()}
    assert all(len(ids) == 1 for ids in run_ids.values()), run_ids
    assert len({ids[0] for ids in run_ids.values()}) == 1, run_ids
    assert run_ids["ingest"][0] == "scheduled__2026-11-23T00_00_00_00_00"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", run_ids["ingest"][0])
    assert all(flag_values(a, "--conf") == [str(REPO / "conf/local.yaml")] for a in args.values())
    assert all(flag_values(a, "--set") == [] for a in args.values())
    assert all(dag.get_task(job).conf is None for job in JOBS)
    # The operator keeps the connection id private; there is no public accessor.
    assert {dag.get_task(job)._conn_id for job in JOBS} == {"spark_default"}
    assert dag.schedule == "@daily"


def test_deployment_settings_come_from_the_environment(monkeypatch, tmp_path):
    dag = load_dag(
        monkeypatch,
        HYBRIDREC_HOME=str(tmp_path),
        HYBRIDREC_CONF="conf/local.yaml, /etc/hybridrec/prod.yaml",
        HYBRIDREC_SET="run.work_dir=/data/hr,ingest.event_types=[review,rating], als.max_iter=3",
        HYBRIDREC_SPARK_CONN_ID="spark_yarn",
        HYBRIDREC_PYTHON="/opt/hr/bin/python",
        HYBRIDREC_SCHEDULE="none",
    )
    assert dag.schedule is None
    for job in JOBS:
        task = dag.get_task(job)
        args = rendered_args(task)
        assert task.application == str(tmp_path / "jobs" / f"{job}.py")
        assert task._conn_id == "spark_yarn"
        assert task.conf == {"spark.pyspark.python": "/opt/hr/bin/python"}
        assert flag_values(args, "--conf") == [
            str(tmp_path / "conf/local.yaml"),
            "/etc/hybridrec/prod.yaml",
        ]
        assert flag_values(args, "--set") == [
            "run.work_dir=/data/hr",
            "ingest.event_types=[review,rating]",
            "als.max_iter=3",
        ]
