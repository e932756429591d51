"""The Airflow DAG: six spark-submit tasks in pipeline order, sharing conf, overrides and a run id
made from the logical date; overrides rendered per run; retries; the packed executor environment.

Needs Airflow 3 and its Spark provider, which live in their own venv (see
pipelines/airflow_dag.py). Skipped where they are not installed, e.g. in the project venv;
tests/integration/test_airflow_schedule.py runs this file inside such a venv
(``pytest --noconftest``: the repo's conftest files import hybridrec, which is not there).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("airflow.sdk")
pytest.importorskip("airflow.providers.apache.spark")

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "pipelines" / "airflow_dag.py"
JOBS = ["ingest", "embed", "topics", "als", "score", "evaluate"]
ENV_KEYS = (
    "HYBRIDREC_HOME",
    "HYBRIDREC_CONF",
    "HYBRIDREC_SET",
    "HYBRIDREC_SPARK_CONN_ID",
    "HYBRIDREC_PYTHON",
    "HYBRIDREC_ARCHIVE",
    "HYBRIDREC_PY_FILES",
    "HYBRIDREC_SCHEDULE",
    "HYBRIDREC_RETRIES",
    "HYBRIDREC_RETRY_DELAY",
)
# The CLI's rule for --run-id (hybridrec.config.checks.check_run_id).
RUN_ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NOV_23 = datetime(2026, 11, 23, tzinfo=timezone.utc)


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


def dag_run(logical_date: datetime | None, run_after: datetime | None = None) -> SimpleNamespace:
    return SimpleNamespace(logical_date=logical_date, run_after=run_after or logical_date)


def context(run: SimpleNamespace) -> dict:
    """What Airflow 3's task runner puts in a template context: ``ds`` and friends only when
    the run has a logical date."""
    ctx = {"dag_run": run, "run_id": "manual__whatever"}
    if run.logical_date is not None:
        ctx.update(
            logical_date=run.logical_date,
            ds=f"{run.logical_date:%Y-%m-%d}",
            ds_nodash=f"{run.logical_date:%Y%m%d}",
        )
    return ctx


def rendered_args(task, run: SimpleNamespace) -> list[str]:
    """``application_args`` as the task would submit them in ``run`` (rendered in place, as
    Airflow does, so each call needs a freshly parsed DAG)."""
    task.render_template_fields(context(run))
    return task.application_args


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_tasks_run_in_pipeline_order_one_at_a_time(monkeypatch):
    dag = load_dag(monkeypatch)
    assert dag.dag_id == "hybridrec"
    assert sorted(dag.task_ids) == sorted(JOBS)
    upstream = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert upstream == {
        "ingest": set(),
        "embed": {"ingest"},
        "topics": {"embed"},
        "als": {"ingest"},
        "score": {"embed", "als"},
        "evaluate": {"score", "topics"},
    }
    # Each job holds the warehouse lock: embed and als must not start together.
    assert dag.max_active_tasks == 1
    assert dag.max_active_runs == 1


def test_each_task_submits_its_own_job_file(monkeypatch):
    dag = load_dag(monkeypatch)
    for job in JOBS:
        application = Path(dag.get_task(job).application)
        assert application == REPO / "jobs" / f"{job}.py"
        assert application.is_file(), f"{application} does not exist"


def test_daily_with_retries_and_one_run_id_from_the_logical_date(monkeypatch):
    dag = load_dag(monkeypatch)
    assert dag.schedule == "@daily"
    args = {job: rendered_args(dag.get_task(job), dag_run(NOV_23)) for job in JOBS}
    run_ids = {job: flag_values(a, "--run-id") for job, a in args.items()}
    assert run_ids == {job: ["d20261123"] for job in JOBS}
    assert all(flag_values(a, "--conf") == [str(REPO / "conf/local.yaml")] for a in args.values())
    assert all(flag_values(a, "--set") == [] for a in args.values())
    for job in JOBS:
        task = dag.get_task(job)
        assert task.conf is None
        assert task.py_files is None
        assert task._archives is None
        assert task.retries == 2
        assert task.retry_delay == timedelta(minutes=5)
    # The operator keeps the connection id private; there is no public accessor.
    assert {dag.get_task(job)._conn_id for job in JOBS} == {"spark_default"}


def test_retry_of_a_date_reuses_its_run_id_and_another_date_gets_another(monkeypatch):
    first = rendered_args(load_dag(monkeypatch).get_task("score"), dag_run(NOV_23))
    # A retry or a clear renders the same run again, possibly hours later.
    retried = rendered_args(
        load_dag(monkeypatch).get_task("score"),
        dag_run(NOV_23, run_after=NOV_23 + timedelta(days=1, hours=3)),
    )
    next_day = rendered_args(
        load_dag(monkeypatch).get_task("score"), dag_run(NOV_23 + timedelta(days=1))
    )
    assert flag_values(first, "--run-id") == flag_values(retried, "--run-id") == ["d20261123"]
    assert flag_values(next_day, "--run-id") == ["d20261124"]


@pytest.mark.parametrize(
    ("logical_date", "run_after", "expected"),
    [
        (NOV_23, None, "d20261123"),
        (NOV_23 + timedelta(hours=6), None, "d20261123T060000"),
        # Another time zone: the UTC date and time.
        (
            datetime(2026, 11, 23, 1, 0, tzinfo=timezone(timedelta(hours=2))),
            None,
            "d20261122T230000",
        ),
        # An Airflow 3 manual run without a logical date: its run_after, always with the time.
        (None, NOV_23 + timedelta(hours=10, minutes=15, seconds=12), "d20261123T101512"),
        (None, NOV_23, "d20261123T000000"),
    ],
)
def test_run_id_rule(monkeypatch, logical_date, run_after, expected):
    dag = load_dag(monkeypatch)
    args = rendered_args(dag.get_task("ingest"), dag_run(logical_date, run_after))
    assert flag_values(args, "--run-id") == [expected]
    assert RUN_ID_RULE.fullmatch(expected)


def test_overrides_are_templates_rendered_per_run(monkeypatch):
    env = {
        "HYBRIDREC_SET": (
            "source.kind=generic,"
            "source.generic.behaviour.path=/data/events/dt={{ ds }},"
            "mlflow.experiment=hr-{{ ds_nodash }}"
        )
    }
    for run, day in [
        (dag_run(NOV_23), "2026-11-23"),
        (dag_run(NOV_23 + timedelta(days=1)), "2026-11-24"),
        # No logical date: the date of run_after, where Airflow itself would give no ``ds``.
        (dag_run(None, NOV_23 + timedelta(days=2, hours=9)), "2026-11-25"),
    ]:
        dag = load_dag(monkeypatch, **env)
        for job in JOBS:
            args = rendered_args(dag.get_task(job), run)
            assert flag_values(args, "--set") == [
                "source.kind=generic",
                f"source.generic.behaviour.path=/data/events/dt={day}",
                f"mlflow.experiment=hr-{day.replace('-', '')}",
            ]


def test_an_unknown_template_variable_fails_the_task(monkeypatch):
    from jinja2 import UndefinedError

    dag = load_dag(monkeypatch, HYBRIDREC_SET="source.generic.behaviour.path=/data/{{ dss }}")
    with pytest.raises(UndefinedError):
        rendered_args(dag.get_task("ingest"), dag_run(NOV_23))


def test_deployment_settings_come_from_the_environment(monkeypatch, tmp_path):
    dag = load_dag(
        monkeypatch,
        HYBRIDREC_HOME=str(tmp_path),
        HYBRIDREC_CONF="conf/local.yaml, /etc/hybridrec/prod.yaml",
        HYBRIDREC_SET="run.work_dir=/data/hr,ingest.event_types=[review,rating], als.max_iter=3",
        HYBRIDREC_SPARK_CONN_ID="spark_yarn",
        HYBRIDREC_PYTHON="/opt/hr/bin/python",
        HYBRIDREC_PY_FILES="/opt/hr/extra.zip,/opt/hr/udf.py",
        HYBRIDREC_SCHEDULE="none",
        HYBRIDREC_RETRIES="5",
        HYBRIDREC_RETRY_DELAY="30",
    )
    assert dag.schedule is None
    for job in JOBS:
        task = dag.get_task(job)
        args = rendered_args(task, dag_run(NOV_23))
        assert task.application == str(tmp_path / "jobs" / f"{job}.py")
        assert task._conn_id == "spark_yarn"
        assert task.conf == {"spark.pyspark.python": "/opt/hr/bin/python"}
        assert task.py_files == "/opt/hr/extra.zip,/opt/hr/udf.py"
        assert task._archives is None
        assert task.retries == 5
        assert task.retry_delay == timedelta(seconds=30)
        assert flag_values(args, "--conf") == [
            str(tmp_path / "conf/local.yaml"),
            "/etc/hybridrec/prod.yaml",
        ]
        assert flag_values(args, "--set") == [
            "run.work_dir=/data/hr",
            "ingest.event_types=[review,rating]",
            "als.max_iter=3",
        ]


@pytest.mark.parametrize(
    ("python", "driver_python"), [("/opt/hr/bin/python", "/opt/hr/bin/python"), (None, "python3")]
)
def test_packed_environment_runs_the_executors(monkeypatch, python, driver_python):
    env = {"HYBRIDREC_ARCHIVE": "hdfs:///apps/hybridrec/hybridrec-env.tar.gz"}
    if python:
        env["HYBRIDREC_PYTHON"] = python
    dag = load_dag(monkeypatch, **env)
    for job in JOBS:
        task = dag.get_task(job)
        assert task._archives == "hdfs:///apps/hybridrec/hybridrec-env.tar.gz#env"
        # Executors unpack the archive as ./env; the driver (client mode) is not inside it.
        assert task.conf == {
            "spark.pyspark.python": "./env/bin/python",
            "spark.pyspark.driver.python": driver_python,
        }


def test_the_dag_file_imports_neither_pyspark_nor_hybridrec():
    tree = ast.parse(DAG_FILE.read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert not imported & {"pyspark", "hybridrec", "jobs"}, imported
