"""The end of a run, as an operator or analyst reads it: the headline numbers and where to look.

Printed when a run completes: the ranking metrics of every model on the test split, the
hybrid's paired gaps with their intervals, and ready-to-paste commands that open the tables
(SQL), the notebook, the MLflow UI and the logged ALS model, with this run's settings filled in.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
from pyspark.sql import functions as F

from hybridrec.config import Config
from hybridrec.constants import COMPARISONS, METRICS, MODELS
from hybridrec.masking import mask_text
from hybridrec.tables import Warehouse

HEADLINE = ("ndcg", "hr")
REPO = Path(__file__).resolve().parents[1]
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
    cfg: Config, warehouse: Warehouse, tracking_uri: str, mlflow_run_id: str | None
) -> list[str]:
    args = " ".join(shlex.quote(a) for a in config_args(cfg))
    db = warehouse.database
    lines = [
        f"tables: {warehouse.db_root} (catalog database {db}; each table has a <table>_latest "
        "view of the newest complete run, and recommendations_explained)",
        f'  hybridrec sql {args} "SELECT * FROM {db}.metrics_latest"',
        f"  hybridrec sql-server {args}   # JDBC for BI tools and beeline",
        f"notebook: HYBRIDREC_ARGS={shlex.quote(args)} jupyter lab {_notebook()}",
        f"MLflow UI: mlflow ui --backend-store-uri {shlex.quote(mask_text(tracking_uri))}",
    ]
    if mlflow_run_id:
        lines.append(
            f"MLflow run {mlflow_run_id}; ALS model: runs:/{mlflow_run_id}/als_model "
            "(README, 'MLflow', shows how to load it)"
        )
    return lines
