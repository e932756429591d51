"""Airflow 3 DAG ``hybridrec``: each job is one ``spark-submit jobs/<name>.py`` task.

    ingest -+-> embed -+-> score -> evaluate
            +-> als ---+

Every task gets the same ``--conf`` files, the same ``--set`` overrides and the same ``--run-id``
(Airflow's run id, with anything outside ``[A-Za-z0-9_-]`` replaced by ``_``), so the five
separately submitted jobs log under one MLflow parent run and write one ``recommendations``
partition. A retried or cleared task reuses its run's id.

Deploy:
    1. Install ``apache-airflow`` 3.x and ``apache-airflow-providers-apache-spark`` in Airflow's
       own environment, not the project venv (the provider brings ``pyspark-client``, which
       clashes with ``pyspark``). This file imports neither pyspark nor hybridrec.
    2. Symlink or copy this file into the DAGs folder. The repo must be at ``HYBRIDREC_HOME`` on
       every worker, and ``HYBRIDREC_PYTHON`` (or the cluster's python) must have hybridrec and
       its dependencies installed: in client mode the driver runs on the Airflow worker.
    3. Create a Spark connection (``spark-submit`` must be on the workers' PATH, or named in its
       extra), e.g. ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "yarn"}'``.
    4. Set these in the environment of the dag processor and the workers alike (read at parse
       time; both parse this file):

       HYBRIDREC_HOME           repo root with jobs/ and conf/ (default: two levels above this file)
       HYBRIDREC_CONF           comma-separated conf files, absolute or relative to HYBRIDREC_HOME
                                (default ``conf/local.yaml``)
       HYBRIDREC_SET            comma-separated ``key=value`` overrides, each passed as ``--set``
                                (default none); list values keep their commas: ``a.b=[x,y]``
       HYBRIDREC_SPARK_CONN_ID  Airflow connection of the cluster (default ``spark_default``)
       HYBRIDREC_PYTHON         interpreter for ``spark.pyspark.python`` (default: the cluster's)
       HYBRIDREC_SCHEDULE       cron or preset, ``none`` for manual runs only (default ``@daily``)

    spark-submit runs in the worker's current directory, not the repo, so give ``run.work_dir``
    (or ``run.warehouse_dir``) as an absolute path or URI that every task can reach.

Try it locally, from a separate Airflow venv (Airflow 3 and its Spark provider bring
``pyspark-client``, which clashes with the project's ``pyspark``):

    export AIRFLOW_HOME=/tmp/airflow-home AIRFLOW__CORE__DAGS_FOLDER=$PWD/pipelines
    export AIRFLOW_CONN_SPARK_LOCAL='{"conn_type": "spark", "host": "local[2]",
        "extra": {"spark-binary": "spark-submit"}}'
    export HYBRIDREC_SPARK_CONN_ID=spark_local HYBRIDREC_PYTHON=$PWD/.venv/bin/python
    export HYBRIDREC_SET=run.work_dir=/tmp/airflow-hr-work PATH=$PWD/.venv/bin:$PATH
    airflow db migrate && airflow dags test hybridrec 2026-11-23
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

JOBS = ("ingest", "embed", "als", "score", "evaluate")

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
PYTHON = os.environ.get("HYBRIDREC_PYTHON")
SCHEDULE = os.environ.get("HYBRIDREC_SCHEDULE", "@daily").strip()


def pipeline_run_id(airflow_run_id: str) -> str:
    """``scheduled__2026-11-23T00:00:00+00:00`` -> ``scheduled__2026-11-23T00_00_00_00_00``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", airflow_run_id)


def job_arguments() -> list[str]:
    arguments = [flag for path in CONF_FILES for flag in ("--conf", path)]
    arguments += [flag for item in OVERRIDES for flag in ("--set", item)]
    return [*arguments, "--run-id", "{{ run_id | pipeline_run_id }}"]


with DAG(
    dag_id="hybridrec",
    description="hybridrec batch recommender: ingest, embed + ALS, score, evaluate",
    schedule=None if SCHEDULE.lower() in ("", "none") else SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    # Each job holds the warehouse lock while it runs: a second DAG run would be refused (exit 3).
    max_active_runs=1,
    user_defined_filters={"pipeline_run_id": pipeline_run_id},
    doc_md=__doc__,
    tags=["hybridrec", "spark"],
) as dag:
    tasks = {
        job: SparkSubmitOperator(
            task_id=job,
            application=str(HOME / "jobs" / f"{job}.py"),
            application_args=job_arguments(),
            conn_id=SPARK_CONN_ID,
            conf={"spark.pyspark.python": PYTHON} if PYTHON else None,
            name=f"hybridrec-{job}",
        )
        for job in JOBS
    }
    tasks["ingest"] >> [tasks["embed"], tasks["als"]] >> tasks["score"] >> tasks["evaluate"]
