"""Airflow 3 DAG ``hybridrec``: each job is one ``spark-submit jobs/<name>.py`` task, run daily.

    ingest -+-> embed -+-----------> score -+-> evaluate
            |          +-> topics ----------+
            +-> als ---------------^

Run id and input partition come from the logical date. Every task of a DAG run gets the same
``--conf`` files, the same ``--set`` overrides and the same ``--run-id``, made from the run's
logical date: ``d20261123`` for 2026-11-23 00:00 UTC, ``d20261123T060000`` when the time is not
midnight (a sub-daily schedule). So the six separately submitted jobs log under one MLflow parent
run and write one ``recommendations`` partition, and a retried task, a cleared task or a re-run of
the same date (``airflow dags test hybridrec 2026-11-23`` twice) resumes that same pipeline run.
``HYBRIDREC_SET`` values are Jinja templates rendered per run, so an input partition is named
from the date: ``source.generic.behaviour.path=/data/events/dt={{ ds }}``.

An Airflow 3 run triggered by hand may have no logical date. Such a run takes its date from its
``run_after`` (when it was triggered) instead: ``{{ ds }}`` and ``{{ ds_nodash }}`` are that
day, and its run id always carries the time (``d20261123T101512``), so it never resumes the
scheduled run of that day. Retries and clears of that manual run keep its run id.

Retries are safe: each job writes only its run's snapshot (``run_id`` partition) of its tables,
replacing what an earlier attempt of the same run id wrote, and the ``runs`` table counts the
attempt; a run id resumed with other results-deciding settings is refused (exit 2) rather than
mixing two configurations. One task runs at a time (``max_active_tasks=1``, ``max_active_runs=1``)
since each job holds the warehouse lock while it runs.

Deploy:
    1. Install Airflow in its own environment, not the project venv (its Spark provider brings
       ``pyspark-client``, which clashes with ``pyspark``): ``pip install -r
       .ci/airflow-requirements.txt``. This file imports neither pyspark nor hybridrec.
    2. Symlink or copy this file into the DAGs folder. The repo must be at ``HYBRIDREC_HOME`` on
       every worker, and ``HYBRIDREC_PYTHON`` (or the cluster's python) must have hybridrec and
       its dependencies installed: in client mode the driver runs on the Airflow worker.
    3. Create a Spark connection (``spark-submit`` must be on the workers' PATH, ahead of
       Airflow's own ``bin``), e.g. ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark",
       "host": "yarn"}'``.
    4. Set these in the environment of the dag processor and the workers alike (read at parse
       time; both parse this file):

       HYBRIDREC_HOME           repo root with jobs/ and conf/ (default: two levels above this file)
       HYBRIDREC_CONF           comma-separated conf files, absolute or relative to HYBRIDREC_HOME
                                (default ``conf/local.yaml``)
       HYBRIDREC_SET            comma-separated ``key=value`` overrides, each passed as ``--set``
                                and rendered as a Jinja template per run (default none); list
                                values keep their commas: ``a.b=[x,y]``
       HYBRIDREC_SPARK_CONN_ID  Airflow connection of the cluster (default ``spark_default``)
       HYBRIDREC_PYTHON         interpreter for ``spark.pyspark.python`` (default: the
                                cluster's); with HYBRIDREC_ARCHIVE, the driver's only
                                (``spark.pyspark.driver.python``, default ``python3``)
       HYBRIDREC_ARCHIVE        packed executor environment (``hybridrec pack``'s
                                ``hybridrec-env.tar.gz``, any path spark-submit takes): shipped as
                                ``--archives <path>#env``; executors run ``./env/bin/python``
       HYBRIDREC_PY_FILES       ``--py-files`` value (comma-separated .zip/.egg/.py)
       HYBRIDREC_SCHEDULE       cron or preset, ``none`` for manual runs only (default ``@daily``)
       HYBRIDREC_RETRIES        retries of a failed task (default 2)
       HYBRIDREC_RETRY_DELAY    seconds between tries (default 300)

    spark-submit runs in the worker's current directory, not the repo, so give ``run.work_dir``
    (or ``run.warehouse_dir``) as an absolute path or URI that every task can reach.

Try it locally (as tests/integration/test_airflow_schedule.py does):

    python3 -m venv /tmp/airflow-venv
    /tmp/airflow-venv/bin/pip install -r .ci/airflow-requirements.txt
    export AIRFLOW_HOME=/tmp/airflow-home AIRFLOW__CORE__DAGS_FOLDER=$PWD/pipelines
    export AIRFLOW_CONN_SPARK_LOCAL='{"conn_type": "spark", "host": "local[2]",
        "extra": {"spark-binary": "spark-submit"}}'
    export HYBRIDREC_SPARK_CONN_ID=spark_local HYBRIDREC_PYTHON=$PWD/.venv/bin/python
    export HYBRIDREC_SET=run.work_dir=/tmp/airflow-hr-work
    export PATH=$PWD/.venv/bin:/tmp/airflow-venv/bin:$PATH   # the project's spark-submit first
    airflow db migrate && airflow dags test hybridrec 2026-11-23
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

JOBS = ("ingest", "embed", "topics", "als", "score", "evaluate")

HOME = Path(os.environ.get("HYBRIDREC_HOME") or Path(__file__).resolve().parents[1])
CONF_FILES = [
    str(HOME / path.strip())  # an absolute path stays as it is
    for path in os.environ.get("HYBRIDREC_CONF", "conf/local.yaml").split(",")
    if path.strip()
]
# Split only at commas that start the next key=value, so list values such as [x,y] stay whole.
OVERRIDES = [
    item.strip()
    for item in re.split(r",(?=\s*[\w.]+=)", os.environ.get("HYBRIDREC_SET", ""))
    if item.strip()
]
SPARK_CONN_ID = os.environ.get("HYBRIDREC_SPARK_CONN_ID", "spark_default")
PYTHON = os.environ.get("HYBRIDREC_PYTHON") or None
ARCHIVE = os.environ.get("HYBRIDREC_ARCHIVE") or None
PY_FILES = os.environ.get("HYBRIDREC_PY_FILES") or None
SCHEDULE = os.environ.get("HYBRIDREC_SCHEDULE", "@daily").strip()
RETRIES = int(os.environ.get("HYBRIDREC_RETRIES", "2"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("HYBRIDREC_RETRY_DELAY", "300")))


def run_date(dag_run: Any) -> datetime:
    """The date a DAG run stands for, in UTC: its logical date, else (an Airflow 3 manual run
    without one) its ``run_after``."""
    when = dag_run.logical_date or dag_run.run_after
    return when.astimezone(timezone.utc)


def pipeline_run_id(dag_run: Any) -> str:
    """``d20261123`` for a logical date at midnight UTC, else ``d20261123T060000``; a run with
    no logical date always carries the time of its ``run_after``."""
    when = run_date(dag_run)
    if dag_run.logical_date is not None and when.time() == datetime.min.time():
        return f"d{when:%Y%m%d}"
    return f"d{when:%Y%m%dT%H%M%S}"


def spark_conf() -> dict[str, str] | None:
    """Which python the driver and the executors run (see HYBRIDREC_PYTHON, HYBRIDREC_ARCHIVE)."""
    if ARCHIVE:
        return {
            "spark.pyspark.python": "./env/bin/python",
            "spark.pyspark.driver.python": PYTHON or "python3",
        }
    return {"spark.pyspark.python": PYTHON} if PYTHON else None


class HybridrecSparkSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` whose templates also see ``hybridrec_run_id``, and ``ds`` /
    ``ds_nodash`` from ``run_after`` where the run has no logical date."""

    def render_template_fields(self, context, jinja_env=None) -> None:
        dag_run = context["dag_run"]
        context = {**context, "hybridrec_run_id": pipeline_run_id(dag_run)}
        if dag_run.logical_date is None:
            day = run_date(dag_run)
            context.update(ds=f"{day:%Y-%m-%d}", ds_nodash=f"{day:%Y%m%d}")
        super().render_template_fields(context, jinja_env)


def job_arguments() -> list[str]:
    arguments = [flag for path in CONF_FILES for flag in ("--conf", path)]
    arguments += [flag for item in OVERRIDES for flag in ("--set", item)]
    return [*arguments, "--run-id", "{{ hybridrec_run_id }}"]


with DAG(
    dag_id="hybridrec",
    description="hybridrec batch recommender: ingest, embed + topics + ALS, score, evaluate",
    schedule=None if SCHEDULE.lower() in ("", "none") else SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    # Each job holds the warehouse lock while it runs: a second task or DAG run at the same time
    # would be refused (exit 3), so embed and als take turns.
    max_active_runs=1,
    max_active_tasks=1,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
    doc_md=__doc__,
    tags=["hybridrec", "spark"],
) as dag:
    tasks = {
        job: HybridrecSparkSubmitOperator(
            task_id=job,
            application=str(HOME / "jobs" / f"{job}.py"),
            application_args=job_arguments(),
            conn_id=SPARK_CONN_ID,
            conf=spark_conf(),
            archives=f"{ARCHIVE}#env" if ARCHIVE else None,
            py_files=PY_FILES,
            name=f"hybridrec-{job}",
        )
        for job in JOBS
    }
    tasks["ingest"] >> [tasks["embed"], tasks["als"]] >> tasks["score"] >> tasks["evaluate"]
    # Evaluate checks the interests against each user's next item; score does not read them.
    tasks["embed"] >> tasks["topics"] >> tasks["evaluate"]
