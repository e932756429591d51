"""The one MLflow helper. A pipeline run is one parent MLflow run, found by its ``hybridrec.run_id``
tag, so jobs submitted separately (one Airflow task each) still land under the same parent; each
job is a nested run below it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import pandas as pd
import requests
from mlflow.environment_variables import (
    MLFLOW_TRACKING_CLIENT_CERT_PATH,
    MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hybridrec.config.loader import Config, work_path
from hybridrec.safety.redaction import mask_uri, redact_mapping
from hybridrec.store import runs

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

RUN_ID_TAG = "hybridrec.run_id"
ROLE_TAG = "hybridrec.role"  # "pipeline" on the parent; job runs carry the run id tag too
JOB_TAG = "hybridrec.job"
WAREHOUSE_TAG = "hybridrec.warehouse"  # runs of one warehouse: the lock holder owns them
CONFIG_HASH_TAG = "hybridrec.config_hash"
MAX_PARAM_CHARS = 6000
# Seconds a tracking server has to accept a connection, and then to answer.
PROBE_TIMEOUT = 10.0


# As the operator set it: mlflow.set_tracking_uri writes this variable too, so read later it
# would send a second run in this process (another work dir) to the first run's store.
_OPERATOR_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
# Likewise for mlflow.set_registry_uri (see _use_store).
_OPERATOR_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")


class TrackingUnreachableError(RuntimeError):
    """The MLflow tracking server cannot be reached. The message is one line: the URI with its
    credentials masked, why, and the setting to check."""


# The tag on a registered model version naming the pipeline run it serves.
SERVED_RUN_TAG = "hybridrec_run_id"


def tracking_uri(cfg: Config) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if _OPERATOR_TRACKING_URI:
        return _OPERATOR_TRACKING_URI
    # MLflow 3 refuses a plain ./mlruns file store by default; a SQLite file needs no server.
    db = Path(cfg.run.work_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def display_uri(cfg: Config) -> str:
    """The tracking URI as it may be shown: credentials masked."""
    return mask_uri(tracking_uri(cfg))


def tracking_setting(cfg: Config) -> str:
    """Where the tracking URI comes from, for an operator to fix."""
    if cfg.mlflow.tracking_uri:
        return "mlflow.tracking_uri"
    if _OPERATOR_TRACKING_URI:
        return "mlflow.tracking_uri (unset: the environment variable MLFLOW_TRACKING_URI is used)"
    return "run.work_dir (the MLflow store is its mlflow.db)"


def _use_store(cfg: Config) -> None:
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    # Else every MlflowClient() asks the Spark session for a registry URI, which raises once the
    # JVM is gone (killed with the driver's process group): the runs could not be ended FAILED.
    mlflow.set_registry_uri(_OPERATOR_REGISTRY_URI or uri)


def check_reachable(cfg: Config, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail at once, before Spark starts, when the tracking server cannot be reached.

    MLflow's own client retries a refused connection for about 4.5 minutes and then raises an
    exception that carries the URI, password included. Only HTTP(S) servers are asked: one GET
    of the URI without its credentials (none are sent before anything is verified), through the
    proxies and TLS settings MLflow uses. Any HTTP answer, 401 included, means it is reachable;
    a refused connection, an unknown host, a connect timeout or a failed TLS handshake not.

    Args:
        cfg: the run's config.
        timeout: seconds to wait for the connection, and then for an answer.

    Raises:
        TrackingUnreachableError: naming the masked URI, why, and the setting to check.
    """
    uri = tracking_uri(cfg)
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning, with insecure TLS
            requests.get(
                bare,
                timeout=timeout,
                allow_redirects=False,
                verify=_verify_tls(),
                cert=MLFLOW_TRACKING_CLIENT_CERT_PATH.get(),
            )
    except requests.exceptions.ConnectionError as exc:
        raise _unreachable(uri, tracking_setting(cfg), exc) from None
    except requests.exceptions.RequestException:
        return  # it answered, slowly or oddly: MLflow's own calls will tell


def _verify_tls() -> bool | str:
    if MLFLOW_TRACKING_INSECURE_TLS.get():
        return False
    return MLFLOW_TRACKING_SERVER_CERT_PATH.get() or True


@contextlib.contextmanager
def translate_unreachable(cfg: Config) -> Iterator[None]:
    """A tracking server lost mid-run becomes one :class:`TrackingUnreachableError`, not
    MLflow's exception (raised after its retries, with the URI and password in its message)."""
    try:
        yield
    except MlflowException as exc:
        if not any(isinstance(e, requests.exceptions.ConnectionError) for e in _causes(exc)):
            raise
        raise _unreachable(tracking_uri(cfg), tracking_setting(cfg), exc) from None


def _unreachable(uri: str, setting: str, exc: BaseException) -> TrackingUnreachableError:
    return TrackingUnreachableError(
        f"MLflow tracking server {mask_uri(uri)} cannot be reached ({_reason(exc)}): "
        f"check {setting}"
    )


def _reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused", "Name or
    service not known", "timed out"), found below the HTTP libraries' wrappers."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and type(cause).__module__ in ("builtins", "socket", "ssl"):
            return (cause.strerror or str(cause) or type(cause).__name__).strip()
    return type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (causes, contexts, exception arguments, urllib3's
    ``reason``), breadth first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        todo += [e for e in [*wrapped, *current.args] if isinstance(e, BaseException)]


def warehouse_folder(cfg: Config) -> str:
    return f"{work_path(cfg, 'warehouse_dir', 'warehouse')}/{cfg.run.database}.db"


def warehouse_key(cfg: Config) -> str:
    """A search-safe tag value for the warehouse (its path may hold quotes)."""
    return hashlib.sha256(warehouse_folder(cfg).encode()).hexdigest()[:16]


def logged_artifact_uri(mlflow_run_id: str, name: str) -> str | None:
    """``runs:/<run>/<name>`` when MLflow run ``mlflow_run_id`` holds artifact ``name`` (a model
    folder), else None: the summary names only what was logged."""
    if not MlflowClient().list_artifacts(mlflow_run_id, name):
        return None
    return f"runs:/{mlflow_run_id}/{name}"


def served_model_uri(cfg: Config, run_id: str) -> str | None:
    """``models:/<name>/<version>`` of the registry version logged for pipeline run ``run_id``
    (``hybridrec.serving.recommender``), else None."""
    name = cfg.mlflow.registered_model
    for version in MlflowClient().search_model_versions(f"name = '{name}'"):
        if version.tags.get(SERVED_RUN_TAG) == run_id:
            return f"models:/{name}/{version.version}"
    return None


def _experiment_id(cfg: Config) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if tracking_uri(cfg).startswith("sqlite:"):
        artifacts = (Path(cfg.run.work_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts)


def pipeline_run_id(cfg: Config, run_id: str) -> str | None:
    """The MLflow id of pipeline run ``run_id``'s parent run, if it has one."""
    _use_store(cfg)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _parent_run_id(cfg: Config, experiment_id: str, run_id: str) -> str:
    """The pipeline run's parent: found by its tag, else created with the settings that decide
    results as params (a run id never changes them: see ``runs.RunLog.begin``) and the
    operational ones as tags, which may change between attempts. Secrets are masked."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
    )
    settings = redact_mapping(cfg.flat())
    operational = {
        f"setting.{k}": str(v)[:MAX_PARAM_CHARS]
        for k, v in settings.items()
        if k.startswith(runs.OPERATIONAL_SECTIONS)
    }
    tags = {
        RUN_ID_TAG: run_id,
        ROLE_TAG: "pipeline",
        WAREHOUSE_TAG: warehouse_key(cfg),
        f"{WAREHOUSE_TAG}_folder": warehouse_folder(cfg),
        CONFIG_HASH_TAG: runs.config_hash(cfg),
        **operational,
    }
    if found:
        parent_id = found[0].info.run_id
        for key, value in tags.items():
            client.set_tag(parent_id, key, value)
        return parent_id
    parent = client.create_run(experiment_id, run_name=run_id, tags=tags)
    client.log_batch(
        parent.info.run_id,
        params=[
            mlflow.entities.Param(key, str(value)[:MAX_PARAM_CHARS])
            for key, value in settings.items()
            if not key.startswith(runs.OPERATIONAL_SECTIONS)
        ],
    )
    return parent.info.run_id


def _job_run_id(experiment_id: str, parent_id: str, run_id: str, job: str) -> str:
    """The nested run of ``job`` under the parent: a retry reuses it (and drops the grid-point
    runs the earlier attempt left below it) instead of adding a copy."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{RUN_ID_TAG}` = '{run_id}' and tags.`{JOB_TAG}` = '{job}' "
            f"and tags.`mlflow.parentRunId` = '{parent_id}'"
        ),
        max_results=1,
    )
    if not found:
        return client.create_run(
            experiment_id,
            run_name=job,
            tags={RUN_ID_TAG: run_id, JOB_TAG: job, "mlflow.parentRunId": parent_id},
        ).info.run_id
    job_run_id = found[0].info.run_id
    for child in client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{job_run_id}'"
    ):
        client.delete_run(child.info.run_id)
    return job_run_id


def fail_abandoned_runs(cfg: Config) -> list[str]:
    """Mark FAILED the MLflow runs of this warehouse left RUNNING by a process that died (the
    caller holds the warehouse lock, so no live process owns them)."""
    _use_store(cfg)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return []
    stale = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`{WAREHOUSE_TAG}` = '{warehouse_key(cfg)}' and attributes.status = 'RUNNING'"
        ),
    )
    ids = [r.info.run_id for r in stale]
    ids += [
        child.info.run_id
        for parent in stale
        for child in client.search_runs(
            [experiment.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                "and attributes.status = 'RUNNING'"
            ),
        )
    ]
    for mlflow_run_id in ids:
        client.set_terminated(mlflow_run_id, "FAILED")
    if ids:
        log.warning("marked %d MLflow runs FAILED: their processes are gone", len(ids))
    return ids


@contextlib.contextmanager
def job_run(cfg: Config, run_id: str, job: str) -> Iterator[mlflow.ActiveRun]:
    """Open the parent run of ``run_id`` and the nested run of ``job`` inside it."""
    _use_store(cfg)
    experiment_id = _experiment_id(cfg)
    # Runs a job opens itself (an ALS grid point) then land in the same experiment.
    mlflow.set_experiment(experiment_id=experiment_id)
    parent = _parent_run_id(cfg, experiment_id, run_id)
    child = _job_run_id(experiment_id, parent, run_id, job)
    with (
        mlflow.start_run(run_id=parent, experiment_id=experiment_id, log_system_metrics=False),
        mlflow.start_run(run_id=child, nested=True, experiment_id=experiment_id) as active,
    ):
        yield active
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


def log_spark_model(model, name: str, *, staging_dir: str) -> None:
    """Log a Spark ML pipeline as an MLflow ``spark`` flavour model, on the job run and on its
    parent (where a reader of the pipeline run looks).

    ``staging_dir`` must be storage every executor and the driver share (the warehouse): Spark
    writes the model there from the executors, and MLflow copies it from there to the artifact
    store. A driver-local ``file://`` folder would be written on each executor's own host and
    leave an empty model. The model carries the ``hybridrec`` package as code, so its id-index
    stages load where hybridrec is not installed.
    """
    import mlflow.spark
    import pyspark

    with tempfile.TemporaryDirectory(prefix="hybridrec-model-") as tmp:
        local = Path(tmp) / name
        package = copy_package(Path(tmp) / "code" / "hybridrec")
        mlflow.spark.save_model(
            model,
            str(local),
            dfs_tmpdir=staging_dir,
            code_paths=[str(package)],
            # Stated, not inferred: inference reloads the model in a subprocess (~50 s a run here).
            pip_requirements=[f"pyspark=={pyspark.__version__}"],
        )
        mlflow.log_artifacts(str(local), artifact_path=name)
        parent_id = _parent_of_active_run()
        if parent_id:
            MlflowClient().log_artifacts(parent_id, str(local), artifact_path=name)


RANKER_MODEL = "learned_ranker"


def log_ranker_model(model: bytes, features: Sequence[str]) -> None:
    """The learned ranker (UBJSON bytes of an xgboost Booster) as an MLflow ``xgboost`` flavour
    model, on the job run and on its parent: ``mlflow.pyfunc.load_model`` scores a frame of
    the ``features`` columns (NaN where a value is missing) in any process."""
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    booster = xgboost.Booster(model_file=bytearray(model))
    example = pd.DataFrame([[0.0] * len(features)], columns=list(features), dtype="float32")
    with tempfile.TemporaryDirectory(prefix="hybridrec-ranker-") as tmp:
        local = Path(tmp) / RANKER_MODEL
        mlflow.xgboost.save_model(
            booster,
            str(local),
            signature=infer_signature(example, np.zeros(1, np.float32)),
            input_example=example,
            # Stated, not inferred: the CPU wheel's name, not "xgboost", which pulls CUDA.
            pip_requirements=[distribution_requirement(("xgboost-cpu", "xgboost"))],
        )
        mlflow.log_artifacts(str(local), artifact_path=RANKER_MODEL)
        parent_id = _parent_of_active_run()
        if parent_id:
            MlflowClient().log_artifacts(parent_id, str(local), artifact_path=RANKER_MODEL)


def distribution_requirement(names: Sequence[str]) -> str:
    """``name==version`` of the first of ``names`` installed here."""
    for name in names:
        try:
            return f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError(f"none of {', '.join(names)} is installed")


def copy_package(target: Path, source: Traversable | None = None) -> Path:
    """The hybridrec package as plain files, from wherever it is imported: a folder, or the
    ``--py-files`` zip a cluster driver imports it from (MLflow copies only real folders)."""
    source = source or resources.files("hybridrec")
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        if child.is_dir():
            if child.name != "__pycache__":
                copy_package(target / child.name, child)
        elif not child.name.endswith(".pyc"):
            (target / child.name).write_bytes(child.read_bytes())
    return target
