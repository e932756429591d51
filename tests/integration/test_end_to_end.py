"""The whole pipeline on a tiny sample: real Spark, the real bundled encoder, a real MLflow SQLite
store. One run, many assertions on what it wrote."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from hybridrec.analyst import sql_duckdb
from hybridrec.config.loader import load_config
from hybridrec.constants import EARLY, ITEM_NEIGHBOURS, MODELS, TEST, VALIDATION
from hybridrec.models.folds import held_out
from hybridrec.ops.tracking import (
    RANKER_MODEL,
    RUN_ID_TAG,
    SERVED_RUN_TAG,
    pipeline_run_id,
    served_model_uri,
    tracking_uri,
)
from hybridrec.ranking import catalogs, learned, rank, scoring
from hybridrec.store.tables import Warehouse
from pipelines.end_to_end import run_pipeline
from udfs import learned_ranker
from udfs.ranking_kernel import PARTS

pytestmark = pytest.mark.slow

RUN_ID = "e2e-test-run"
K = 5


@pytest.fixture(scope="module")
def e2e(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    cfg = load_config(
        ["conf/local.yaml"],
        [
            f"run.work_dir={work}",
            "source.sample.n_users=120",
            "source.sample.n_items=60",
            "source.sample.events_per_user=8",
            "source.sample.bad_row_fraction=0.03",
            "als.max_iter=5",
            "als.grid.rank=[4, 8]",
            "als.grid.reg_param=[0.1]",
            "als.grid.alpha=[1.0]",
            "score.weight_grid_step=0.25",
            f"score.k={K}",
            f"evaluate.k={K}",
            # Two points on each later grid: every path runs, each at a fraction of the cost.
            "score.debias_grid=[0.0, 1.0]",
            "score.next_share_grid=[0.0, 0.1]",
            "evaluate.ease.l2_grid=[10.0, 50.0]",
            "evaluate.item_knn.neighbours_grid=[10, 20]",
            # The ranker's whole path: served whatever 60-odd held-back users would say.
            "ranker.serve=always",
            "ranker.max_depth_grid=[3]",
        ],
    )
    results = run_pipeline(spark, cfg, RUN_ID)
    return cfg, Warehouse.from_config(spark, cfg, RUN_ID), results


def test_each_fold_catalog_was_collected_once_and_is_still_held(e2e, monkeypatch):
    cfg, warehouse, _ = e2e
    reads, real = [], catalogs._read_catalog

    def counted(warehouse, cfg, fold):
        reads.append(fold)
        return real(warehouse, cfg, fold)

    monkeypatch.setattr(catalogs, "_read_catalog", counted)

    catalog = catalogs.load_catalog(warehouse, cfg, TEST)
    # Held: evaluate's test catalog (the score job's), and the early and validation ones that
    # the weight tuning and the learned ranker both read.
    for fold in (VALIDATION, EARLY):
        catalogs.load_catalog(warehouse, cfg, fold)

    assert reads == [] and len(catalog) > 0
    with pytest.raises(ValueError):
        catalog.pop[0] = 1.0  # shared: no caller may change it under another
    # Any of its tables written again (new files) is another snapshot: read anew.
    stamp = warehouse.files_stamp
    monkeypatch.setattr(
        warehouse,
        "files_stamp",
        lambda name, **kw: ("new",) if name == ITEM_NEIGHBOURS else stamp(name, **kw),
    )
    catalogs.load_catalog(warehouse, cfg, TEST)
    assert reads == [TEST]


def test_every_input_row_is_kept_or_rejected(e2e):
    _, warehouse, results = e2e
    ingest = results["ingest"]
    interactions = warehouse.read("interactions")
    by_origin = dict(interactions.groupBy("origin").count().collect())
    rejects = warehouse.read("rejects").where(F.col("run_id") == RUN_ID)
    assert ingest["behaviour_rejected"] > 0, "the sample breaks some rows on purpose"
    assert ingest["behaviour_in"] == (
        by_origin["behaviour"] + by_origin["behaviour+review"] + ingest["behaviour_rejected"]
    )
    assert ingest["reviews_in"] == (
        by_origin.get("review", 0) + by_origin["behaviour+review"] + ingest["reviews_rejected"]
    )
    assert rejects.count() == ingest["rejects"]
    reasons = {r.reason for r in rejects.select("reason").distinct().collect()}
    assert {"missing user_id", "invalid event_ts", "duplicate row"} <= reasons


def test_split_is_leave_last_out(e2e):
    _, warehouse, _ = e2e
    interactions = warehouse.read("interactions")
    per_user = interactions.groupBy("user_id").agg(
        F.countDistinct(F.when(F.col("split") == "test", F.col("item_id"))).alias("test"),
        F.countDistinct(F.when(F.col("split") == "validation", F.col("item_id"))).alias("val"),
    )
    assert per_user.where("test != 1 or val != 1").count() == 0
    train_pairs = interactions.where("split = 'train'").select("user_id", "item_id")
    held_out = interactions.where("split != 'train'").select("user_id", "item_id")
    assert held_out.join(train_pairs, ["user_id", "item_id"]).count() == 0


def test_embeddings_come_from_the_real_encoder(e2e):
    _, warehouse, results = e2e
    assert results["embed"]["texts_encoded"] > 100
    users = warehouse.read("user_embeddings").toPandas()
    items = warehouse.read("item_embeddings").toPandas()
    # 120 users, far fewer than score.tune_max_users: the early fold is fitted too.
    assert users.groupby("fold")["id"].nunique().to_dict() == {
        "early": 120,
        "test": 120,
        "validation": 120,
    }
    assert items["id"].nunique() == 60
    vectors = np.stack(items["embedding"].to_numpy())
    assert vectors.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert set(users["model_id"]) == {"sentence-transformers/all-MiniLM-L6-v2@256"}


def test_als_factors_cover_each_folds_history(e2e):
    _, warehouse, results = e2e
    interactions = warehouse.read("interactions")
    factors = warehouse.read("als_user_factors")
    # A user keeps every train item in the early fold but the newest of two or more: the same
    # users as in the validation fold.
    folds = {"early": ["train"], "validation": ["train"], "test": ["train", "validation"]}
    for fold, splits in folds.items():
        history_users = interactions.where(F.col("split").isin(splits)).select("user_id")
        in_fold = factors.where(F.col("fold") == fold)
        assert in_fold.count() == history_users.distinct().count()
    assert factors.count() == results["als"]["user_factors"]
    # The grid was searched: the chosen rank is one of the grid's.
    assert results["als"]["chosen_rank"] in (4.0, 8.0)
    assert len(factors.first().factors) == results["als"]["chosen_rank"]


@pytest.mark.parametrize(
    ("table", "section"), [("item_neighbours", "cooc"), ("item_transitions", "transitions")]
)
def test_item_lists_are_built_per_fold(e2e, table, section):
    cfg, warehouse, results = e2e
    lists = warehouse.read(table)
    assert lists.count() == results["als"][table] > 0
    per_item = lists.groupBy("fold", "item_id").count().toPandas()
    assert set(per_item["fold"]) == {"early", "validation", "test"}
    assert per_item["count"].max() <= cfg[section].neighbours
    assert lists.where("item_id = neighbour_id or similarity <= 0").count() == 0


def test_text_neighbours_are_every_text_item_s_closest_per_fold(e2e):
    cfg, warehouse, results = e2e
    closest = warehouse.read("item_text_neighbours")
    assert closest.count() == results["embed"]["text_neighbour_pairs"] > 0
    interacted = warehouse.read("interactions").select(F.col("item_id").alias("id")).distinct()
    vectors = (
        warehouse.read("item_embeddings").join(interacted, "id").groupBy("fold").count().toPandas()
    )
    per_fold = (
        closest.groupBy("fold", "item_id")
        .count()
        .groupBy("fold")
        .agg(
            F.count(F.lit(1)).alias("items"),
            F.min("count").alias("least"),
            F.max("count").alias("most"),
        )
        .toPandas()
        .merge(vectors, on="fold")
    )
    assert set(per_fold["fold"]) == {"early", "validation", "test"}
    # Every candidate item with text (score.catalog: interacted), each with exactly
    # min(cap, other such items) neighbours.
    assert (per_fold["items"] == per_fold["count"]).all()
    expected = np.minimum(cfg.embed.text_neighbours, per_fold["count"] - 1)
    assert (per_fold["least"] == expected).all() and (per_fold["most"] == expected).all()
    assert closest.where("item_id = neighbour_id or similarity > 1.0001").count() == 0


def test_recommendations_are_top_k_unseen_items(e2e):
    cfg, warehouse, _ = e2e
    recs = warehouse.read("recommendations").where(F.col("run_id") == RUN_ID)
    counts = recs.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"), F.countDistinct("item_id").alias("distinct")
    )
    assert counts.count() == 120
    assert counts.where(f"n != {K} or distinct != {K}").count() == 0
    # Served from the test fold: nothing the user had in train or validation comes back.
    history = warehouse.read("interactions").where("split != 'test'").select("user_id", "item_id")
    assert recs.join(history, ["user_id", "item_id"]).count() == 0
    rows = recs.toPandas()
    # Scores fall with rank, and every row says why.
    for _, user_rows in rows.sort_values("rank").groupby("user_id"):
        assert (np.diff(user_rows["score"].to_numpy()) <= 1e-9).all()
    assert rows["reason"].str.len().min() > 0
    # The served lists are the ranker's; the linear hybrid's, its first stage, score each item
    # by its normalised parts weighted as picked on validation.
    linear = (
        warehouse.read("baseline_recommendations")
        .where(f"run_id = '{RUN_ID}' and model = 'hybrid_linear'")
        .toPandas()
    )
    assert linear["user_id"].nunique() == 120
    weights = (
        warehouse.read("fusion_weights")
        .where(f"run_id = '{RUN_ID}' and model = 'hybrid'")
        .toPandas()
        .iloc[0]
    )
    assert weights["recent_sharpness"] in cfg.score.recent_sharpness_grid
    fused = sum(weights[p] * linear[f"{p}_score"] for p in PARTS)
    np.testing.assert_allclose(linear["score"], fused, rtol=1e-4, atol=1e-5)


def test_metrics_hold_every_model(e2e):
    _, warehouse, results = e2e
    metrics = warehouse.read("metrics").where(F.col("run_id") == RUN_ID).toPandas()
    assert set(metrics["model"]) == set(MODELS)
    expected = {"ndcg", "hr", "precision", "recall", "map", "coverage", "diversity", "novelty"}
    reasons = {f"reason_{kind}" for kind in ("cf", "cooc", "text", "next", "pop", "none")}
    for model in MODELS:
        extra = reasons if model in ("hybrid", "hybrid_linear") else set()
        assert set(metrics.loc[metrics["model"] == model, "metric"]) == expected | extra
    shares = metrics[metrics["metric"].isin(reasons)]
    assert shares.groupby("model")["value"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    assert shares["value"].between(0, 1).all()
    assert set(metrics["segment"]) == {"all", "sparse_users", "tail_items"}
    metrics = metrics[metrics["segment"] == "all"]
    ranking = metrics[metrics["metric"].isin(["ndcg", "hr", "precision", "recall", "map"])]
    assert ranking["value"].between(0, 1).all()
    # Popularity recommends (nearly) the same items to everyone: the least coverage.
    coverage = metrics[metrics["metric"] == "coverage"].set_index("model")["value"]
    assert coverage["popularity"] == coverage.min()
    assert results["evaluate"][f"hybrid.ndcg_at_{K}"] == pytest.approx(
        metrics.query("model == 'hybrid' and metric == 'ndcg'")["value"].item()
    )


def test_debias_curve_ranks_the_hybrid_at_every_strength_and_flags_the_served_one(e2e):
    cfg, warehouse, _ = e2e
    curve = warehouse.read("debias_curve").where(F.col("run_id") == RUN_ID).toPandas()
    strengths = sorted({0.0, *cfg.score.debias_grid})
    assert sorted(set(curve["debias"])) == pytest.approx(strengths)
    wide = curve.pivot_table(index="debias", columns="metric", values="value")
    assert set(wide.columns) == {
        "ndcg",
        "hr",
        "coverage",
        "diversity",
        "novelty",
        "tail_hr",
        "sparse_hr",
    }
    served = (
        warehouse.read("fusion_weights")
        .where(f"run_id = '{RUN_ID}' and model = 'hybrid'")
        .first()["debias"]
    )
    assert curve.loc[curve["served"], "debias"].unique() == pytest.approx([served])
    # The curve is the linear hybrid's (the ranker is served): its served point is
    # hybrid_linear's lists, the same NDCG.
    metrics = warehouse.read("metrics").where(F.col("run_id") == RUN_ID).toPandas()
    hybrid = metrics.query("model == 'hybrid_linear' and metric == 'ndcg' and segment == 'all'")
    assert wide.loc[served, "ndcg"] == pytest.approx(hybrid["value"].item())
    # Taking popularity off never makes lists more popular: novelty does not fall.
    assert wide["novelty"].iloc[-1] >= wide["novelty"].iloc[0] - 1e-9


def test_comparisons_are_the_paired_gaps_behind_the_metrics(e2e):
    _, warehouse, _ = e2e
    compared = warehouse.read("comparisons").where(F.col("run_id") == RUN_ID).toPandas()
    metrics = warehouse.read("metrics").where(F.col("run_id") == RUN_ID).toPandas()
    baselines = [m for m in MODELS if m != "hybrid"]
    ranking = ["ndcg", "hr", "precision", "recall", "map"]
    assert len(compared) == 3 * len(baselines) * len(ranking)
    mean = metrics.set_index(["segment", "model", "metric"])["value"]
    for r in compared.itertuples():
        # the mean of per-user gaps is the gap of the means, since both rank the same users
        gap = mean[(r.segment, "hybrid", r.metric)] - mean[(r.segment, r.model, r.metric)]
        assert r.difference == pytest.approx(gap, abs=1e-9)
        assert r.ci_low <= r.difference <= r.ci_high
        assert 0 <= r.p_value <= 1
    every_user = compared.query("segment == 'all'")["users"]
    test_users = warehouse.read("interactions").where("split = 'test'").select("user_id")
    assert (every_user == test_users.distinct().count()).all()


def test_mlflow_run_has_params_metrics_model_and_plot(e2e):
    cfg, warehouse, _ = e2e
    mlflow.set_tracking_uri(tracking_uri(cfg))
    assert tracking_uri(cfg).startswith("sqlite:///")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{RUN_ID}' and tags.`mlflow.runName` = '{RUN_ID}'",
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["als.grid.rank"] == "[4, 8]"
    assert parent.data.params["embed.max_length"] == "256"
    assert 0 <= parent.data.metrics[f"hybrid.ndcg_at_{K}"] <= 1
    assert "popularity.hr_at_5" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics_by_model.png", "als_model"} <= artifacts
    assert f"hybrid_minus_als.sparse_users.hr_p_value_at_{K}" in parent.data.metrics
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert {c.data.tags["mlflow.runName"] for c in children} == {
        "ingest",
        "embed",
        "topics",
        "als",
        "score",
        "evaluate",
    }
    topics_run = next(c for c in children if c.data.tags["mlflow.runName"] == "topics")
    assert (
        topics_run.data.metrics["coherence_npmi"] > topics_run.data.metrics["coherence_npmi_random"]
    )
    assert "topics.csv" in {a.path for a in client.list_artifacts(topics_run.info.run_id)}
    assert 0 <= parent.data.metrics["interests.next_item_hit"] <= 1
    evaluate_run = next(c for c in children if c.data.tags["mlflow.runName"] == "evaluate")
    evaluate_artifacts = {a.path for a in client.list_artifacts(evaluate_run.info.run_id)}
    assert {"metrics.csv", "comparisons.csv"} <= evaluate_artifacts
    als_run = next(c for c in children if c.data.tags["mlflow.runName"] == "als")
    # The spark-flavour model sits as run artifacts on the als job run and on the parent.
    assert "als_model" in {a.path for a in client.list_artifacts(als_run.info.run_id)}
    loaded = mlflow.spark.load_model(f"runs:/{parent.info.run_id}/als_model")
    assert loaded.stages[-1].rank in (4, 8)
    # The weights were picked on the validation and early folds' users pooled: every grid
    # point scored on both (120 users, every one with a validation item and two train items),
    # and the points within noise of the best compared paired.
    score_run = next(c for c in children if c.data.tags["mlflow.runName"] == "score")
    score_artifacts = {a.path for a in client.list_artifacts(score_run.info.run_id)}
    assert {"weight_grid_validation.csv", "near_best_validation.csv"} <= score_artifacts
    tuned = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=score_run.info.run_id, artifact_path="weight_grid_validation.csv"
        )
    )
    interactions = warehouse.read("interactions")
    held_out_users = sum(
        held_out(interactions, fold).select("user_id").distinct().count()
        for fold in (VALIDATION, EARLY)
    )
    assert held_out_users > 120
    assert (tuned["users"] == held_out_users).all()
    # One nested run per ALS grid point below the als job run.
    grid_runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{als_run.info.run_id}'",
    )
    assert len(grid_runs) == 2
    assert all("validation_ndcg" in r.data.metrics for r in grid_runs)


def _served_model_uri(cfg) -> str:
    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_registry_uri(tracking_uri(cfg))
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{cfg.mlflow.registered_model}'")
    runs = [v for v in versions if v.tags.get(SERVED_RUN_TAG) == RUN_ID]
    assert len(runs) == 1, [(v.version, v.tags) for v in versions]
    assert (
        served_model_uri(cfg, RUN_ID) == f"models:/{cfg.mlflow.registered_model}/{runs[0].version}"
    )
    return served_model_uri(cfg, RUN_ID)


def _table_lists(warehouse, users) -> pd.DataFrame:
    recs = warehouse.read("recommendations").where(F.col("run_id") == RUN_ID)
    return recs.where(F.col("user_id").isin(users)).toPandas().sort_values(["user_id", "rank"])


def _explained(cfg, warehouse, users) -> pd.DataFrame:
    """``recommendations_explained``'s rows of ``users``, as DuckDB defines the view over the
    snapshot files (the SQL test asks Spark's too), in list order."""
    columns, rows = sql_duckdb.query(
        sql_duckdb.local_folder(warehouse.db_root),
        cfg.run.database,
        f"SELECT * FROM {cfg.run.database}.recommendations_explained",
        100000,
    )
    explained = pd.DataFrame(rows, columns=columns)
    explained = explained[explained.user_id.isin(users)]
    explained = explained.sort_values(["user_id", "rank"]).reset_index(drop=True)
    # None for a null, whatever dtype pandas gave the column (a null int column is float).
    return explained.assign(
        interest=[None if pd.isna(v) else v for v in explained.interest],
        interest_topic_id=pd.Series(
            [None if pd.isna(v) else int(v) for v in explained.interest_topic_id], dtype=object
        ),
    )


def test_the_served_model_ranks_known_new_and_unknown_users(e2e):
    cfg, warehouse, _ = e2e
    model = mlflow.pyfunc.load_model(_served_model_uri(cfg))
    known = ["u3", "u7"]
    table = _table_lists(warehouse, known)

    served = model.predict(pd.DataFrame({"user_id": known}))

    # The score job's kernel on the run's own state: the table's lists, parts and reasons.
    assert list(served["user_id"].unique()) == known
    for column in ["user_id", "rank", "item_id", "reason", "reason_item_id"]:
        assert served[column].tolist() == table[column].tolist(), column
    # float32 products of another block size (BLAS picks its kernel by the rows it gets): the
    # same figures to within 1e-5.
    for column in ["score", *(f"{p}_score" for p in PARTS)]:
        np.testing.assert_allclose(served[column], table[column], rtol=1e-5, atol=1e-5)
    # The interests the explained view names, row for row.
    explained = _explained(cfg, warehouse, known)
    assert served["interest"].tolist() == explained["interest"].tolist()
    assert served["interest_topic_id"].tolist() == explained["interest_topic_id"].tolist()
    assert served["user_tags"].tolist() == [list(t) for t in explained["user_tags"]]

    items = warehouse.read("items").select("item_id").toPandas()["item_id"].tolist()
    history = pd.DataFrame(
        {
            "user_id": "newcomer",
            "item_id": items[:3],
            "rating": [5.0, 4.0, None],
            "event_ts": ["2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z", None],
            "review_text": ["Soft and warm, I wear it every day.", None, None],
        }
    )
    new = model.predict(history)
    assert len(new) == K and set(new["user_id"]) == {"newcomer"}
    assert new[["user_tags", "interest", "interest_topic_id"]].isna().all().all()  # none yet
    assert not set(new["item_id"]) & set(items[:3])  # nothing the user already has
    assert (np.diff(new["score"].to_numpy()) <= 1e-9).all()

    nobody = model.predict(pd.DataFrame({"user_id": ["nobody"]}))
    assert len(nobody) == K and set(nobody["reason"]) == {"popular"}

    with pytest.raises(Exception, match="known to run"):
        model.predict(history.assign(user_id="u3"))


def test_mlflow_models_serve_answers_with_the_table_s_lists(e2e, tmp_path):
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    cfg, warehouse, _ = e2e
    uri = _served_model_uri(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(cfg),
        "MLFLOW_REGISTRY_URI": tracking_uri(cfg),
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        records = [
            {"user_id": "u5"},
            {"user_id": "fresh", "item_id": "i1", "rating": 5.0, "event_ts": "2024-03-01"},
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": records}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()

    table = _table_lists(warehouse, ["u5"])
    known = answer[answer["user_id"] == "u5"]
    assert known["item_id"].tolist() == table["item_id"].tolist()
    explained = _explained(cfg, warehouse, ["u5"])
    assert known["interest"].tolist() == explained["interest"].tolist()
    np.testing.assert_allclose(known["score"], table["score"], rtol=1e-5, atol=1e-5)
    fresh = answer[answer["user_id"] == "fresh"]
    assert len(fresh) == K and "i1" not in set(fresh["item_id"])


def test_the_ranker_scores_a_served_row_from_mlflow_in_a_fresh_process(e2e, tmp_path):
    import json
    import os
    import subprocess
    import sys

    cfg, warehouse, _ = e2e
    row = warehouse.read("learned_ranker").where(F.col("run_id") == RUN_ID).first()
    assert row["served"] and "ranker.serve is always" in row["note"]
    assert list(row["features"]) == list(learned_ranker.FEATURES)
    assert row["train_users"] > 0 and row["rounds"] >= 1 and row["max_depth"] == 3
    assert -1 <= row["ndcg_gain"] <= 1 and row["ndcg_gain_se"] >= 0
    # One user's served items as feature rows, made as the score job made them.
    picked = (
        warehouse.read("fusion_weights").where(f"run_id = '{RUN_ID}' and model = 'hybrid'").first()
    )
    weights = {**{p: float(picked[p]) for p in PARTS}, "debias": float(picked["debias"])}
    inputs = learned.fold_inputs(warehouse, cfg, TEST, bytes(row["model"]))
    block = (
        scoring.load_user_frame(warehouse.spark, warehouse, inputs.catalog, TEST)
        .where(F.col("user_id") == "u3")
        .toPandas()
    )
    settings = learned.kernel_settings(
        cfg, float(picked["recent_sharpness"]), rank.ranking_mode(warehouse, cfg)
    )
    candidates = learned_ranker.candidate_set(
        block, inputs.catalog, inputs.context, weights, **settings
    )
    table = _table_lists(warehouse, ["u3"])
    slots = [list(candidates.item_ids[0]).index(item) for item in table["item_id"]]
    features = candidates.features[0, slots]
    rows = tmp_path / "rows.parquet"
    pd.DataFrame(features, columns=list(learned_ranker.FEATURES)).to_parquet(rows)

    # A fresh process with MLflow alone: the logged model scores the rows.
    uri = f"runs:/{pipeline_run_id(cfg, RUN_ID)}/{RANKER_MODEL}"
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(json.dumps([float(x) for x in model.predict(pd.read_parquet(sys.argv[2]))]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, uri, str(rows)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trees = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    # The logged model is the trees; the served score adds their base margin, the linear score.
    served = trees + features[:, learned_ranker.LINEAR_SCORE]
    np.testing.assert_allclose(served, table["score"], rtol=1e-5, atol=1e-5)


def test_topics_are_named_by_their_words_and_every_user_s_interests_add_up(e2e):
    cfg, warehouse, results = e2e
    topics = warehouse.read("topics").toPandas().set_index("topic_id")
    k = int(results["topics"]["topics"])
    assert list(topics.index.sort_values()) == list(range(k)) and k in cfg.topics.k_grid
    for topic in topics.itertuples():
        assert len(topic.top_words) == cfg.topics.top_words
        assert topic.label == ", ".join(topic.top_words[: cfg.topics.label_words])
        assert list(topic.word_scores) == sorted(topic.word_scores, reverse=True)
        assert 1 <= len(topic.central_item_ids) <= cfg.topics.central_items
    # Every item the served fold has a text vector for is in exactly one topic.
    assigned = warehouse.read("item_topics").toPandas()
    vectors = warehouse.read("item_embeddings").where(F.col("fold") == TEST)
    assert sorted(assigned.item_id) == sorted(r.id for r in vectors.select("id").collect())
    assert topics["items"].sum() == len(assigned)

    interests = warehouse.read("user_interests").toPandas()
    history_users = (
        warehouse.read("interactions").where(F.col("split") != TEST).select("user_id").distinct()
    )
    assert len(interests) == history_users.count()
    for user in interests.itertuples():
        assert sum(user.shares) == pytest.approx(1.0)
        assert list(user.shares) == sorted(user.shares, reverse=True)
        assert list(user.tag_topic_ids) == list(user.topic_ids[: cfg.topics.interests_top])
        assert list(user.tags) == [topics.label[t] for t in user.tag_topic_ids]
        assert user.top_tag == user.tags[0]
    checks = results["evaluate"]
    assert (
        checks["interests.gain_low"]
        <= (checks["interests.next_item_hit"] - checks["interests.popular_topics_hit"])
        <= checks["interests.gain_high"]
    )


def test_recommendations_explained_names_the_interest_a_text_pick_lies_in(e2e):
    cfg, warehouse, _ = e2e
    users = warehouse.read("recommendations").select("user_id").distinct().toPandas()
    explained = _explained(cfg, warehouse, users["user_id"].tolist())
    assert {"user_tags", "interest", "interest_topic_id"} <= set(explained.columns)
    named = explained[explained.interest.notna()]
    assert len(named) > 0
    labels = warehouse.read("topics").toPandas().set_index("topic_id").label
    assigned = warehouse.read("item_topics").toPandas().set_index("item_id").topic_id
    for row in named.itertuples():
        assert row.reason.startswith("similar to") or row.reason == "matches your reviews"
        assert row.interest_topic_id == assigned[row.item_id]
        assert row.interest == f"for your interest in {labels[row.interest_topic_id]}"
        assert labels[row.interest_topic_id] in list(row.user_tags)
    # A pick some other part explains names no interest.
    other = explained[
        ~explained.reason.str.startswith("similar to")
        & (explained.reason != "matches your reviews")
    ]
    assert other.interest.isna().all()
