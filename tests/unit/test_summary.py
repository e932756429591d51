"""The end-of-run summary: headline numbers an operator can read, commands they can paste."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pandas as pd

from hybridrec.config.loader import load_config
from hybridrec.ops import summary


def test_headline_shows_each_model_and_says_which_gaps_are_ties():
    metrics = pd.DataFrame(
        [
            (m, metric, 10, v)
            for m, v in (("hybrid", 0.2), ("als", 0.1))
            for metric in ("ndcg", "hr")
        ],
        columns=["model", "metric", "k", "value"],
    )
    gaps = pd.DataFrame(
        [("als", "ndcg", 0.1, 0.05, 0.15, 0.001), ("als", "hr", 0.01, -0.02, 0.04, 0.4)],
        columns=["model", "metric", "difference", "ci_low", "ci_high", "p_value"],
    )

    lines = summary.format_headline(metrics, gaps, 0.95)

    text = "\n".join(lines)
    assert "ndcg@10" in lines[1] and "hr@10" in lines[1]
    assert [ln.split()[0] for ln in lines[2:4]] == ["hybrid", "als"]  # model order, not a-z
    assert "ndcg@10  vs als        +0.1000 [+0.0500, +0.1500] p=0.001 (better)" in text
    assert "hr@10    vs als        +0.0100 [-0.0200, +0.0400] p=0.400 (tie)" in text


def test_commands_carry_the_runs_files_and_location_settings_but_no_secret(tmp_path):
    overlay = tmp_path / "my conf.yaml"
    overlay.write_text("run:\n  work_dir: w\n")
    cfg = load_config(
        [overlay],
        [
            f"run.work_dir={tmp_path}/work",
            "mlflow.tracking_uri=postgresql://bob:hunter2@db/mlflow",
            "als.rank=8",
        ],
    )

    args = summary.config_args(cfg)

    assert args[:2] == ["--conf", str(overlay)]
    assert f"run.work_dir={tmp_path}/work" in args
    assert "als.rank=8" not in args  # results settings do not locate anything
    assert "hunter2" not in " ".join(args)
    assert shlex.split(shlex.join(args)) == args


def _warehouse(tmp_path, tables=(), catalog=()):
    """What ``where_things_are`` asks a warehouse: its folders, and what the catalog holds."""
    return SimpleNamespace(
        db_root=f"{tmp_path}/warehouse/hybridrec.db",
        database="hybridrec",
        tables=lambda: sorted(tables),
        qualified=lambda name: f"hybridrec.{name}",
        spark=SimpleNamespace(
            catalog=SimpleNamespace(
                tableExists=lambda name: name in {f"hybridrec.{c}" for c in catalog}
            )
        ),
    )


COMPLETE = ["runs", "metrics", "runs_latest", "metrics_latest", "recommendations_explained"]


def _where(tmp_path, warehouse, uri=None, mlflow_run_id="abc123", **models):
    cfg = load_config([], [f"run.work_dir={tmp_path}"])
    uri = uri or f"sqlite:///{tmp_path}/mlflow.db"
    return "\n".join(summary.where_things_are(cfg, warehouse, uri, mlflow_run_id, **models))


def test_the_als_model_is_named_only_when_it_was_logged(tmp_path):
    warehouse = _warehouse(tmp_path, ["runs", "metrics"], COMPLETE)

    without = _where(tmp_path, warehouse)
    logged = _where(tmp_path, warehouse, als_model_uri="runs:/abc123/als_model")

    assert "MLflow run abc123" in without
    assert "runs:/" not in without and "ALS model" not in without
    assert "ALS model: runs:/abc123/als_model" in logged


def test_the_served_model_is_named_with_its_serve_command_without_credentials(tmp_path):
    warehouse = _warehouse(tmp_path, ["runs", "metrics"], COMPLETE)
    uri = "http://bob:hunter22@mlflow:5000/"

    without = _where(tmp_path, warehouse, uri=uri)
    served = _where(tmp_path, warehouse, uri=uri, served_model_uri="models:/hybridrec/3")

    assert "served model" not in without
    assert "served model: models:/hybridrec/3" in served
    assert (
        "MLFLOW_TRACKING_URI=http://mlflow:5000/ mlflow models serve -m models:/hybridrec/3"
        in served
    )
    assert "hunter22" not in served
    local = _where(tmp_path, warehouse, served_model_uri="models:/hybridrec/3")
    assert f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db mlflow models serve" in local


def test_only_what_exists_is_named(tmp_path):
    # A run of ingest alone on a new warehouse: no metrics, no view of a complete run yet.
    ingest_only = _where(tmp_path, _warehouse(tmp_path, ["runs", "interactions"], ["runs"]))
    assert f"tables: {tmp_path}/warehouse/hybridrec.db" in ingest_only
    assert "metrics_latest" not in ingest_only and "_latest view" not in ingest_only
    assert "recommendations_explained" not in ingest_only
    assert "hybridrec sql --set" in ingest_only and "FROM hybridrec.runs" in ingest_only
    assert "explore_run.ipynb" not in ingest_only  # it reads the views of a complete run
    assert "mlflow.db" not in ingest_only  # no MLflow store was written there

    (tmp_path / "mlflow.db").write_bytes(b"")
    complete = _where(tmp_path, _warehouse(tmp_path, ["runs", "metrics"], COMPLETE))
    assert "metrics_latest" in complete and "recommendations_explained" in complete
    assert "explore_run.ipynb" in complete
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in complete

    nothing = _where(tmp_path, _warehouse(tmp_path), mlflow_run_id=None)
    assert "tables:" not in nothing and "hybridrec sql" not in nothing
    assert "MLflow run" not in nothing


def test_a_tracking_server_is_its_own_ui_named_without_credentials(tmp_path):
    text = _where(
        tmp_path, _warehouse(tmp_path, ["runs"], ["runs"]), uri="http://bob:hunter22@mlflow:5000/"
    )
    assert "MLflow UI: http://mlflow:5000/" in text
    assert "hunter22" not in text and "--backend-store-uri" not in text
