"""Ranking over per-user candidates (catalogs too large to broadcast), on a tiny sample run.

With every unseen item a candidate, candidate ranking must give what full ranking gives; with
small candidate sets, recommendations come only from each user's candidates; and the score and
evaluate stages run end to end in that mode without broadcasting or collecting the catalog.
"""

from __future__ import annotations

from functools import reduce

import pandas as pd
import pytest
from pyspark import SparkContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.constants import METRICS, MODELS, RECOMMENDATIONS, SPLIT_COL, TEST, VALIDATION
from hybridrec.models.folds import history
from hybridrec.ranking import candidates, catalogs, rank, scoring
from hybridrec.store.tables import Warehouse
from pipelines.end_to_end import run_pipeline
from udfs.ranking_kernel import PARTS

pytestmark = pytest.mark.slow

RUN_ID = "candidates-test-run"
K = 5
N_ITEMS = 60
WEIGHTS = {"cf": 0.3, "cooc": 0.2, "text": 0.1, "recent": 0.3, "pop": 0.1}
SHARPNESS = 40.0  # neighbour votes: the same definition in both modes


def settings(work, *extra: str) -> list[str]:
    return [
        f"run.work_dir={work}",
        "source.sample.n_users=120",
        f"source.sample.n_items={N_ITEMS}",
        "source.sample.events_per_user=8",
        "als.max_iter=5",
        "als.grid.rank=[8]",
        # Two points: the als job ranks each on validation (a one-point grid is not scored).
        "als.grid.reg_param=[0.1, 0.3]",
        "als.grid.alpha=[1.0]",
        "score.weight_grid_step=0.5",
        "score.recent_sharpness_grid=[40.0]",
        f"score.k={K}",
        f"evaluate.k={K}",
        # One or two points on each later grid: every path runs, at a fraction of the cost.
        "score.debias_grid=[0.0, 1.0]",
        "score.next_share_grid=[0.0, 0.1]",
        "evaluate.ease.l2_grid=[10.0]",
        "evaluate.item_knn.neighbours_grid=[10]",
        # No early fold: auto fits it below 10,000 validation users, where candidate ranking is
        # rare; the end-to-end test covers it under full ranking.
        "score.early_target=never",
        *extra,
    ]


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """A warehouse through ingest, embed and als (the tables both ranking modes read), in a
    run whose settings rank over small candidate sets (a run id stands for one config)."""
    work = tmp_path_factory.mktemp("candidates")
    cfg = load_config(["conf/local.yaml"], small(work))
    results = run_pipeline(spark, cfg, RUN_ID, ["ingest", "embed", "als"])
    # The als job ranked its grid point on validation over candidates (ALS top-N, popular).
    assert 0 < results["als"]["validation_ndcg"] <= 1
    return work, Warehouse.from_config(spark, cfg, RUN_ID)


def everything(work):
    """Candidate sets that hold every catalog item."""
    return settings(
        work,
        "score.candidates.mode=candidates",
        f"score.candidates.als={N_ITEMS}",
        f"score.candidates.cooc={N_ITEMS}",
        f"score.candidates.text={N_ITEMS}",
        f"score.candidates.next={N_ITEMS}",
        f"score.candidates.popular={N_ITEMS}",
        "score.candidates.item_block_rows=17",  # several item blocks, uneven
    )


def test_with_every_item_a_candidate_the_ranking_is_full_ranking(spark, built):
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], everything(work))
    catalog = catalogs.load_catalog(warehouse, cfg, TEST)
    users = scoring.load_user_frame(spark, warehouse, catalog, TEST)
    full = scoring.recommend(users, catalog, {"m": WEIGHTS}, cfg, recent_sharpness=SHARPNESS)
    over = candidates.recommend(
        candidates.load_fold(warehouse, cfg, TEST),
        TEST,
        {"m": WEIGHTS},
        cfg,
        scoring.RECOMMENDATION_SCHEMA,
        recent_sharpness=SHARPNESS,
    )
    key = ["user_id", "rank"]
    full_rows = full.toPandas().sort_values(key).reset_index(drop=True)
    over_rows = over.toPandas().sort_values(key).reset_index(drop=True)
    assert len(full_rows) == len(over_rows) > 0
    assert (full_rows[key] == over_rows[key]).all().all()
    # Float32 sums in a different order may swap two items with almost equal scores.
    same_item = (full_rows["item_id"] == over_rows["item_id"]).mean()
    assert same_item >= 0.97, same_item
    assert (full_rows["score"] - over_rows["score"]).abs().max() < 1e-3
    for part in [f"{p}_score" for p in PARTS]:
        both = full_rows["item_id"] == over_rows["item_id"]
        gap = (full_rows.loc[both, part] - over_rows.loc[both, part]).abs().max()
        assert gap < 1e-3, part


def small(work):
    return settings(
        work,
        "score.candidates.mode=candidates",
        "score.candidates.als=4",
        "score.candidates.cooc=3",
        "score.candidates.text=3",
        "score.candidates.next=3",
        "score.candidates.popular=2",
        "score.history_items=3",
        # Candidates as Spark rows; ``test_candidates_chosen_in_memory_...`` compares the
        # in-memory path with them.
        "score.candidates.max_memory_items=0",
    )


def test_recommendations_come_from_each_users_candidates(spark, built):
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], small(work))
    tables = candidates.load_fold(warehouse, cfg, TEST)
    users = candidates.users_to_rank(tables, TEST)
    # The sharpness orders the text votes, so it decides which text neighbours are candidates.
    pairs = candidates.candidate_pairs(tables, cfg, TEST, users, 2.5).toPandas()
    assert pairs.groupby("user_id").size().max() <= 4 + 3 + 3 + 3 + 2
    seen = history(tables.interactions, TEST).select("user_id", "item_id").toPandas()
    assert pairs.merge(seen, on=["user_id", "item_id"]).empty
    recs = candidates.recommend(
        tables, TEST, {"m": WEIGHTS}, cfg, scoring.RECOMMENDATION_SCHEMA, recent_sharpness=2.5
    ).toPandas()
    assert set(recs["user_id"]) == set(users.toPandas()["user_id"])
    allowed = set(zip(pairs["user_id"], pairs["item_id"], strict=True))
    assert all(pair in allowed for pair in zip(recs["user_id"], recs["item_id"], strict=True))
    assert (
        recs.groupby("user_id")["rank"]
        .apply(lambda r: list(r.sort_values()))
        .map(lambda r: r == list(range(1, len(r) + 1)))
        .all()
    )
    named = recs["reason_item_id"].dropna()
    assert set(named) <= set(seen["item_id"])


def test_candidates_chosen_in_memory_rank_as_the_spark_rows(spark, built):
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], small(work))
    in_memory = rank.RankingMode(N_ITEMS, rank.MEMORY)
    as_rows = rank.RankingMode(N_ITEMS, rank.SPARK)
    models = {"m": WEIGHTS, "d": {**WEIGHTS, "debias": 1.0}}
    lists = {
        mode.how: rank.rank_fold(warehouse, cfg, TEST, models, recent_sharpness=2.5, mode=mode)
        .toPandas()
        .sort_values(["model", "user_id", "rank"])
        .reset_index(drop=True)
        for mode in (in_memory, as_rows)
    }
    memory, rows = lists[rank.MEMORY], lists[rank.SPARK]
    key = ["model", "user_id", "rank"]
    assert len(memory) == len(rows) > 0
    assert (memory[key] == rows[key]).all().all()
    same = memory["item_id"] == rows["item_id"]
    # Float32 sums in a different order may swap two items with almost equal scores.
    assert same.mean() >= 0.97, same.mean()
    assert (memory["score"] - rows["score"]).abs().max() < 1e-3
    # A vote tie between two history items may name either (Spark's max_by).
    assert (memory.loc[same, "reason"] == rows.loc[same, "reason"]).mean() >= 0.97
    grid = [WEIGHTS, {"cf": 1.0}, {"recent": 1.0}]
    tuned = {}
    for mode in (in_memory, as_rows):
        with rank.validation_tuner(warehouse, cfg, mode, grid) as tune:
            tuned[mode.how] = tune(SHARPNESS).sort_values("combo").reset_index(drop=True)
    memory, rows = tuned[rank.MEMORY], tuned[rank.SPARK]
    assert (memory["users"] == rows["users"]).all() and rows["users"].iloc[0] > 0
    assert memory["candidate_recall"].tolist() == pytest.approx(rows["candidate_recall"].tolist())
    assert memory["ndcg"].tolist() == pytest.approx(rows["ndcg"].tolist(), abs=0.02)


@pytest.mark.parametrize("how", [rank.FULL, rank.MEMORY])
def test_passes_in_one_go_rank_as_a_pass_each(spark, built, how):
    """Evaluate's single pass over users (sharpness and user sample per entry) gives what
    separate passes give: the same users, lists and scores for every entry."""
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], small(work))
    mode = rank.RankingMode(N_ITEMS, how)
    passes = [
        (2.5, 1.0, {"m": WEIGHTS}),
        (SHARPNESS, 0.5, {"d": {**WEIGHTS, "debias": 1.0}, "c": {"cf": 1.0}}),
    ]
    key = ["model", "user_id", "rank"]

    def listed(df: DataFrame) -> pd.DataFrame:
        return df.toPandas().sort_values(key).reset_index(drop=True)

    together = listed(rank.rank_fold_passes(warehouse, cfg, TEST, passes, mode=mode))
    apart = listed(
        reduce(
            DataFrame.unionByName,
            [
                rank.rank_fold(warehouse, cfg, TEST, m, recent_sharpness=s, mode=mode, sample=f)
                for s, f, m in passes
            ],
        )
    )
    sampled = together[together["model"] == "d"]["user_id"].nunique()
    assert 0 < sampled < together[together["model"] == "m"]["user_id"].nunique()
    pd.testing.assert_frame_equal(together, apart)
    with pytest.raises(ValueError, match="every user"):
        rank.rank_fold_passes(warehouse, cfg, TEST, passes[::-1], mode=mode)


def test_candidate_recall_is_the_share_of_targets_among_candidates(spark, built):
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], small(work))
    tables = candidates.load_fold(warehouse, cfg, VALIDATION)
    ranks = candidates.tune_ranks(
        tables, VALIDATION, [WEIGHTS], cfg, scoring.TUNE_SCHEMA, recent_sharpness=SHARPNESS
    )
    summary = candidates.summarise(ranks, K).toPandas()
    targets = candidates.targets(tables, VALIDATION).toPandas()
    pairs = candidates.candidate_pairs(
        tables, cfg, VALIDATION, candidates.targets(tables, VALIDATION).select("user_id"), SHARPNESS
    ).toPandas()
    hits = targets.merge(
        pairs.rename(columns={"item_id": "target"}), on=["user_id", "target"], how="inner"
    )
    assert summary["users"].iloc[0] == len(targets) > 0
    share = summary["candidate_recall"].iloc[0]
    assert share == pytest.approx(len(hits) / len(targets))
    assert 0 < share < 1  # small sets on purpose: some targets are missed
    ranks = ranks.toPandas()
    missed = set(targets["user_id"]) - set(hits["user_id"])
    assert (ranks[ranks["user_id"].isin(missed)]["target_rank"] == candidates.MISS_RANK).all()
    assert (ranks[~ranks["user_id"].isin(missed)]["target_rank"] <= 4 + 3 + 3 + 3 + 2).all()
    hit = ranks["target_rank"] <= K
    assert summary["hr"].iloc[0] == pytest.approx(hit.mean())


def test_score_and_evaluate_run_over_candidates_without_broadcasting_the_catalog(
    spark, built, monkeypatch
):
    work, warehouse = built
    cfg = load_config(["conf/local.yaml"], small(work))

    def refuse(*args, **kwargs):
        raise AssertionError("candidate ranking broadcast or collected something item-sized")

    # Full ranking collects the catalog (toPandas) and broadcasts it (SparkContext.broadcast):
    # neither may happen here. Spark's own small-table broadcast joins are the planner's call.
    monkeypatch.setattr(SparkContext, "broadcast", refuse)
    monkeypatch.setattr(scoring, "build_catalog", refuse)
    results = run_pipeline(spark, cfg, RUN_ID, ["score", "evaluate"])
    monkeypatch.undo()
    score = results["score"]
    assert score["ranked_over_candidates"] == 1.0
    assert 0 < score["validation_candidate_recall"] <= 1
    recs = warehouse.read(RECOMMENDATIONS).toPandas()
    assert recs.groupby("user_id").size().max() == K
    metrics = warehouse.read(METRICS).toPandas()
    # EASE needs an items x items matrix on every task: not where nothing item-sized may go;
    # nor the learned ranker, which reads the catalog's arrays: the linear hybrid is served.
    assert set(metrics["model"]) == set(MODELS) - {"ease", "hybrid_linear"}
    note = warehouse.read("learned_ranker").first()["note"]
    assert note.startswith("linear hybrid served") and "Spark rows" in note
    truth_users = (
        warehouse.read("interactions").where(F.col(SPLIT_COL) == TEST).select("user_id").distinct()
    )
    assert isinstance(truth_users, DataFrame)
    assert recs["user_id"].nunique() >= truth_users.count() * 0.9
    assert pd.notna(metrics["value"]).all()
