"""The end of a run, as an operator or analyst reads it: the headline numbers and where to look.

Printed when a run ends: for a complete run the ranking metrics of every model on the test
split and the hybrid's paired gaps with their intervals; then ready-to-paste commands that open
the tables (SQL), the notebook, the MLflow UI and the logged ALS model, with this run's settings
filled in. Each names only what exists: a view once some run has made it, the notebook once
there are metrics to explore, a local MLflow store once it was written, the model once logged.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import COMPARISONS, METRICS, MODELS
from hybridrec.safety.masking import mask_text
from hybridrec.store.tables import Warehouse
from hybridrec.views import EXPLAINED, LATEST_SUFFIX, RUNS

HEADLINE = ("ndcg", "hr")
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"


def config_args(cfg: Config) -> list[str]:
    """The ``--conf``/``--set`` arguments that find this run's warehouse, catalog and MLflow
    store again: the overlay files, and the ``run.``/``mlflow.`` overrides (secrets masked)."""
    args: list[str] = []
    for source in cfg.sources[1:]:
        if source.startswith("--set "):
            item = source.removeprefix("--set ")
            if item.startswith(("run.", "mlflow.")):
                args += ["--set", mask_text(item)]
        else:
            args += ["--conf", str(Path(source).resolve())]
    return args


def headline_tables(warehouse: Warehouse, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model x metric on all test users, and the hybrid's gaps; a few rows each."""
    metrics = (
        warehouse.read(METRICS, run_id=run_id)
        .where((F.col("segment") == "all") & F.col("metric").isin(*HEADLINE))
        .select("model", "metric", "k", "value")
        .toPandas()
    )
    gaps = (
        warehouse.read(COMPARISONS, run_id=run_id)
        .where((F.col("segment") == "all") & F.col("metric").isin(*HEADLINE))
        .select("model", "metric", "difference", "ci_low", "ci_high", "p_value")
        .toPandas()
    )
    return metrics, gaps


def format_headline(metrics: pd.DataFrame, gaps: pd.DataFrame, confidence: float) -> list[str]:
    if metrics.empty:
        return []
    k = int(metrics["k"].iloc[0])
    wide = metrics.pivot(index="model", columns="metric", values="value")
    wide = wide.reindex([m for m in MODELS if m in wide.index])[[*HEADLINE]]
    wide.columns = [f"{m}@{k}" for m in wide.columns]
    wide.index.name = None
    lines = [f"test split, all users, K={k}:"]
    lines += ["  " + line for line in wide.to_string(float_format="%.4f").splitlines()]
    if not gaps.empty:
        lines.append(
            f"hybrid minus each baseline, paired by user ({100 * confidence:.0f}% interval):"
        )
        for row in gaps.sort_values(["metric", "model"]).itertuples():
            verdict = (
                "tie" if row.ci_low <= 0 <= row.ci_high else "better" if row.ci_low > 0 else "worse"
            )
            lines.append(
                f"  {row.metric + '@' + str(k):<8} vs {row.model:<10} {row.difference:+.4f} "
                f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}] p={row.p_value:.3f} ({verdict})"
            )
    return lines


def _notebook() -> str:
    if NOTEBOOK.is_file():
        return str(NOTEBOOK)
    # A wheel install has no notebooks folder: name it in the repository.
    return "notebooks/explore_run.ipynb   # in a hybridrec checkout"


def where_things_are(
    cfg: Config,
    warehouse: Warehouse,
    tracking_uri: str,
    mlflow_run_id: str | None,
    als_model_uri: str | None = None,
    served_model_uri: str | None = None,
) -> list[str]:
    """Ready-to-paste commands for what this run left, each line only for what exists.

    Args:
        cfg: the run's config (its overlays and location settings go into the commands).
        warehouse: the run's warehouse; its folders and catalog say what exists.
        tracking_uri: the MLflow store.
        mlflow_run_id: the run's parent MLflow run, if it has one.
        als_model_uri: the ALS model's ``runs:/`` URI, if the run logged one.
        served_model_uri: the registered served recommender's ``models:/`` URI, if any.
    """
    args = " ".join(shlex.quote(a) for a in config_args(cfg))
    lines = _table_lines(warehouse, args) + _notebook_lines(warehouse, args)
    lines += _mlflow_ui_lines(tracking_uri)
    if mlflow_run_id:
        run = f"MLflow run {mlflow_run_id}"
        if als_model_uri:
            run += f"; ALS model: {als_model_uri} (README, 'MLflow', shows how to load it)"
        lines.append(run)
    if served_model_uri:
        # Credentials stay out (the serving shell has its own).
        store = shlex.quote(mask_text(_without_credentials(tracking_uri)))
        lines.append(
            f"served model: {served_model_uri}; REST: MLFLOW_TRACKING_URI={store} "
            f"mlflow models serve -m {served_model_uri} --env-manager local -p 5000"
        )
    return lines


def _in_catalog(warehouse: Warehouse, name: str) -> bool:
    return warehouse.spark.catalog.tableExists(warehouse.qualified(name))


def _table_lines(warehouse: Warehouse, args: str) -> list[str]:
    if not warehouse.tables():
        return []
    db = warehouse.database
    about = f"catalog database {db}"
    if _in_catalog(warehouse, RUNS + LATEST_SUFFIX):
        about += "; each table has a <table>_latest view of the newest complete run"
        if _in_catalog(warehouse, EXPLAINED):
            about += ", and recommendations_explained"
    example = next(
        (name for name in (METRICS + LATEST_SUFFIX, RUNS) if _in_catalog(warehouse, name)), None
    )
    lines = [f"tables: {warehouse.db_root} ({about})"]
    if example:
        lines.append(f'  hybridrec sql {args} "SELECT * FROM {db}.{example}"')
    lines.append(f"  hybridrec sql-server {args}   # JDBC for BI tools and beeline")
    return lines


def _notebook_lines(warehouse: Warehouse, args: str) -> list[str]:
    # It explores the views of the newest complete run, starting from its metrics.
    if not _in_catalog(warehouse, METRICS + LATEST_SUFFIX):
        return []
    return [f"notebook: HYBRIDREC_ARGS={shlex.quote(args)} jupyter lab {_notebook()}"]


def _without_credentials(uri: str) -> str:
    """An http(s) store's address without its user and password; any other URI as it is (a
    sqlite URI's empty host must keep its slashes)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _mlflow_ui_lines(tracking_uri: str) -> list[str]:
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        # A tracking server is its own UI; credentials stay out of the address.
        return [f"MLflow UI: {_without_credentials(tracking_uri)}"]
    if parts.scheme == "sqlite" and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []
    return [f"MLflow UI: mlflow ui --backend-store-uri {shlex.quote(mask_text(tracking_uri))}"]
