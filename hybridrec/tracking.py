"""The one MLflow helper. A pipeline run is one parent MLflow run, found by its ``hybridrec.run_id``
tag, so jobs submitted separately (one Airflow task each) still land under the same parent; each
job is a nested run below it."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from hybridrec.config import Config

log = logging.getLogger(__name__)

RUN_ID_TAG = "hybridrec.run_id"
ROLE_TAG = "hybridrec.role"  # "pipeline" on the parent; job runs carry the run id tag too
MAX_PARAM_CHARS = 6000


def tracking_uri(cfg: Config) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    # MLflow 3 refuses a plain ./mlruns file store by default; a SQLite file needs no server.
    db = Path(cfg.run.work_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _experiment_id(cfg: Config) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if tracking_uri(cfg).startswith("sqlite:"):
        artifacts = (Path(cfg.run.work_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts)


def _parent_run_id(cfg: Config, experiment_id: str, run_id: str) -> str:
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    parent = client.create_run(
        experiment_id, run_name=run_id, tags={RUN_ID_TAG: run_id, ROLE_TAG: "pipeline"}
    )
    client.log_batch(
        parent.info.run_id,
        params=[
            mlflow.entities.Param(key, str(value)[:MAX_PARAM_CHARS])
            for key, value in cfg.flat().items()
        ],
    )
    return parent.info.run_id


@contextlib.contextmanager
def job_run(cfg: Config, run_id: str, job: str) -> Iterator[mlflow.ActiveRun]:
    """Open the parent run of ``run_id`` (creating it with the resolved config as params) and a
    nested run for ``job`` inside it."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment_id = _experiment_id(cfg)
    # Runs a job opens itself (an ALS grid point) then land in the same experiment.
    mlflow.set_experiment(experiment_id=experiment_id)
    parent = _parent_run_id(cfg, experiment_id, run_id)
    with (
        mlflow.start_run(run_id=parent, experiment_id=experiment_id, log_system_metrics=False),
        mlflow.start_run(
            run_name=job, nested=True, experiment_id=experiment_id, tags={RUN_ID_TAG: run_id}
        ) as child,
    ):
        yield child
    MlflowClient().set_terminated(parent, "FINISHED")


def _parent_of_active_run() -> str | None:
    # The ActiveRun object holds the run as it was at start; ask the store for its tags.
    run = MlflowClient().get_run(mlflow.active_run().info.run_id)
    return run.data.tags.get("mlflow.parentRunId")


def log_job_metrics(metrics: Mapping[str, float], *, parent_too: bool = False) -> None:
    """Log numeric results of the active job run (and, for headline numbers, of its parent)."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    mlflow.log_metrics(numeric)
    if parent_too:
        parent_id = _parent_of_active_run()
        if parent_id:
            MlflowClient().log_batch(
                parent_id,
                metrics=[
                    mlflow.entities.Metric(k, v, mlflow.utils.time.get_current_time_millis(), 0)
                    for k, v in numeric.items()
                ],
            )


def log_figure(figure, name: str) -> None:
    """On the job run and on its parent, where a reader of the pipeline run looks first."""
    mlflow.log_figure(figure, name)
    parent_id = _parent_of_active_run()
    if parent_id:
        MlflowClient().log_figure(parent_id, figure, name)


def log_spark_model(model, name: str) -> None:
    """Log a fitted Spark ML model as an MLflow ``spark`` flavour model, on the job run and on
    its parent (where a reader of the pipeline run looks). ``mlflow.spark`` wants a
    PipelineModel; it is saved once to a local folder, so no DFS is needed in local mode."""
    import mlflow.spark
    import pyspark
    from pyspark.ml import PipelineModel

    with tempfile.TemporaryDirectory(prefix="hybridrec-model-") as tmp:
        local = Path(tmp) / name
        mlflow.spark.save_model(
            PipelineModel(stages=[model]),
            str(local),
            dfs_tmpdir=(Path(tmp) / "dfs").as_uri(),
            # Stated, not inferred: inference reloads the model in a subprocess (~50 s a run here).
            pip_requirements=[f"pyspark=={pyspark.__version__}"],
        )
        mlflow.log_artifacts(str(local), artifact_path=name)
        parent_id = _parent_of_active_run()
        if parent_id:
            MlflowClient().log_artifacts(parent_id, str(local), artifact_path=name)
