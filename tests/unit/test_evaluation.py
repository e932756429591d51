"""hybridrec.evaluation.metrics: ranking metrics, coverage, diversity, novelty and segments, checked
against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from hybridrec.evaluation import metrics as evaluation

LOG2_3 = math.log2(3)  # 1.5849625: the discount of rank 2


def _recs(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, "model string, user_id string, rank int, item_id string")


def _truth(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, "user_id string, item_id string")


def _values(df: DataFrame) -> dict[tuple[str, str], float]:
    """Long-format metrics as {(model, metric): value}, after checking the shape."""
    rows = df.collect()
    assert df.columns == ["model", "metric", "k", "value"]
    keys = [(r["model"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), f"one row per (model, metric), got {keys}"
    return {(r["model"], r["metric"]): r["value"] for r in rows}


def _ks(df: DataFrame) -> set[int]:
    return {r["k"] for r in df.select("k").collect()}


# --- ranking_metrics -------------------------------------------------------------------------


def test_ranking_metrics_two_models_hand_computed(spark):
    truth = _truth(
        spark,
        [
            ("u1", "a"),
            ("u1", "b"),
            ("u1", "b"),  # a repeated truth row is still one relevant item
            ("u2", "c"),
            ("u3", "d"),
        ],
    )
    recs = _recs(
        spark,
        [
            # m1, u1: one hit (a) at rank 2; b at rank 4 is beyond k = 3 and ignored.
            ("m1", "u1", 1, "x"),
            ("m1", "u1", 2, "a"),
            ("m1", "u1", 3, "y"),
            ("m1", "u1", 4, "b"),
            # m1, u2: the only relevant item first.
            ("m1", "u2", 1, "c"),
            ("m1", "u2", 2, "x"),
            ("m1", "u2", 3, "y"),
            # m1 says nothing for u3 (m2 does): u3 counts as zero for m1.
            # m1, u9 has no truth: not part of any average.
            ("m1", "u9", 1, "a"),
            # m2, u1: both relevant items at the top (perfect).
            ("m2", "u1", 1, "a"),
            ("m2", "u1", 2, "b"),
            ("m2", "u1", 3, "x"),
            # m2, u2: the hit is at rank 4, beyond k: zero.
            ("m2", "u2", 1, "x"),
            ("m2", "u2", 2, "y"),
            ("m2", "u2", 3, "z"),
            ("m2", "u2", 4, "c"),
            # m2, u3: a one-item list with the hit.
            ("m2", "u3", 1, "d"),
        ],
    )

    out = evaluation.ranking_metrics(recs, truth, 3)
    values = _values(out)

    # Per user at k = 3 (n_rel: u1 2, u2 1, u3 1):
    #   m1 u1: dcg = 1/log2(3); idcg = 1 + 1/log2(3) (min(3, 2) = 2 slots);
    #          ndcg = 0.6309298 / 1.6309298 = 0.3868528; hr 1; precision 1/3; recall 1/2;
    #          AP = (1 hit / rank 2) / min(3, 2) = 0.25.
    #   m1 u2: all 1 except precision 1/3.   m1 u3: all 0.
    #   m2 u1: ndcg 1, hr 1, precision 2/3, recall 1, AP (1/1 + 2/2) / 2 = 1.
    #   m2 u2: all 0.   m2 u3: ndcg, hr, recall, AP 1; precision 1/3.
    assert values == {
        ("m1", "ndcg"): pytest.approx((0.3868528 + 1 + 0) / 3, rel=1e-6),
        ("m1", "hr"): pytest.approx(2 / 3),
        ("m1", "precision"): pytest.approx((1 / 3 + 1 / 3 + 0) / 3),
        ("m1", "recall"): pytest.approx((0.5 + 1 + 0) / 3),
        ("m1", "map"): pytest.approx((0.25 + 1 + 0) / 3),
        ("m2", "ndcg"): pytest.approx(2 / 3),
        ("m2", "hr"): pytest.approx(2 / 3),
        ("m2", "precision"): pytest.approx((2 / 3 + 0 + 1 / 3) / 3),
        ("m2", "recall"): pytest.approx(2 / 3),
        ("m2", "map"): pytest.approx(2 / 3),
    }
    assert values[("m1", "ndcg")] == pytest.approx(0.4622843, rel=1e-6)
    assert _ks(out) == {3}


def test_ranking_metrics_perfect_ranking_scores_one(spark):
    truth = _truth(spark, [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u2", "d")])
    recs = _recs(
        spark,
        [
            ("m", "u1", 1, "a"),
            ("m", "u1", 2, "b"),
            ("m", "u2", 1, "d"),
            ("m", "u2", 2, "c"),
            ("m", "u2", 3, "x"),  # beyond k
        ],
    )

    values = _values(evaluation.ranking_metrics(recs, truth, 2))

    assert values == {("m", metric): pytest.approx(1.0) for metric in evaluation.RANKING_METRICS}


def test_ranking_metrics_k_smaller_than_relevant_items(spark):
    # Three relevant items, k = 2: MAP and the ideal DCG only have room for two.
    truth = _truth(spark, [("u1", "a"), ("u1", "b"), ("u1", "c")])
    recs = _recs(
        spark,
        [
            ("full", "u1", 1, "b"),
            ("full", "u1", 2, "a"),
            ("full", "u1", 3, "c"),
            ("half", "u1", 1, "a"),
            ("half", "u1", 2, "z"),
            ("half", "u1", 3, "b"),
        ],
    )

    values = _values(evaluation.ranking_metrics(recs, truth, 2))

    # full: both slots hit: ndcg 1, AP (1/1 + 2/2) / min(2, 3) = 1, recall 2/3.
    # half: a at rank 1: dcg 1, idcg 1 + 1/log2(3) -> ndcg 1 / 1.6309298 = 0.6131472;
    #       AP (1/1) / 2 = 0.5; precision 1/2; recall 1/3.
    assert values == {
        ("full", "ndcg"): pytest.approx(1.0),
        ("full", "hr"): pytest.approx(1.0),
        ("full", "precision"): pytest.approx(1.0),
        ("full", "recall"): pytest.approx(2 / 3),
        ("full", "map"): pytest.approx(1.0),
        ("half", "ndcg"): pytest.approx(0.6131472, rel=1e-6),
        ("half", "hr"): pytest.approx(1.0),
        ("half", "precision"): pytest.approx(0.5),
        ("half", "recall"): pytest.approx(1 / 3),
        ("half", "map"): pytest.approx(0.5),
    }
    assert values[("half", "ndcg")] == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_ranking_metrics_map_counts_hits_in_order(spark):
    # Two relevant of three at k = 3, hits at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 0.8333333.
    # ndcg = (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309298 = 0.9197208.
    truth = _truth(spark, [("u1", "a"), ("u1", "b")])
    recs = _recs(spark, [("m", "u1", 1, "a"), ("m", "u1", 2, "x"), ("m", "u1", 3, "b")])

    values = _values(evaluation.ranking_metrics(recs, truth, 3))

    assert values[("m", "map")] == pytest.approx(0.8333333, rel=1e-6)
    assert values[("m", "ndcg")] == pytest.approx(0.9197208, rel=1e-6)
    assert values[("m", "precision")] == pytest.approx(2 / 3)
    assert values[("m", "recall")] == pytest.approx(1.0)


# --- catalog_coverage ------------------------------------------------------------------------


def test_catalog_coverage_counts_distinct_items_in_top_k(spark):
    recs = _recs(
        spark,
        [
            ("m1", "u1", 1, "a"),
            ("m1", "u1", 2, "b"),
            ("m1", "u1", 3, "c"),  # beyond k
            ("m1", "u2", 1, "a"),  # a again: counted once
            ("m1", "u2", 2, "d"),
            ("m2", "u1", 1, "e"),
        ],
    )

    out = evaluation.catalog_coverage(recs, 10, 2)

    assert _values(out) == {
        ("m1", "coverage"): pytest.approx(0.3),  # {a, b, d} of 10
        ("m2", "coverage"): pytest.approx(0.1),
    }
    assert _ks(out) == {2}


# --- intra_list_diversity --------------------------------------------------------------------


def test_intra_list_diversity_mean_pairwise_cosine_distance(spark):
    vectors = spark.createDataFrame(
        [
            ("a", [1.0, 0.0]),
            ("b", [0.0, 1.0]),
            ("c", [-1.0, 0.0]),
            ("d", [0.6, 0.8]),
            ("e", [0.0, -1.0]),
        ],
        "id string, embedding array<float>",
    )
    recs = _recs(
        spark,
        [
            # m1 u1: pairs ab 1 - 0 = 1, ac 1 - (-1) = 2, bc 1 - 0 = 1 -> mean 4/3.
            ("m1", "u1", 1, "a"),
            ("m1", "u1", 2, "b"),
            ("m1", "u1", 3, "c"),
            # m1 u2: pair ad 1 - 0.6 = 0.4; e at rank 4 is beyond k.
            ("m1", "u2", 1, "a"),
            ("m1", "u2", 2, "d"),
            ("m1", "u2", 4, "e"),
            # m2 u1: pair bd 1 - 0.8 = 0.2. m2 u2: one item, no pair, no value.
            ("m2", "u1", 1, "b"),
            ("m2", "u1", 2, "d"),
            ("m2", "u2", 1, "a"),
        ],
    )

    out = evaluation.intra_list_diversity(recs, vectors, 3)

    assert _values(out) == {
        ("m1", "diversity"): pytest.approx((4 / 3 + 0.4) / 2, rel=1e-6),  # 0.8666667
        ("m2", "diversity"): pytest.approx(0.2, rel=1e-6),
    }
    assert _ks(out) == {3}


# --- novelty ---------------------------------------------------------------------------------


def test_novelty_is_mean_self_information_with_add_one_smoothing(spark):
    history = _truth(
        spark,
        [
            ("u1", "a"),
            ("u1", "a"),  # a repeat of the same user does not make a more popular
            ("u2", "a"),
            ("u3", "a"),
            ("u1", "b"),
            ("u1", "b"),
        ],
    )
    recs = _recs(
        spark,
        [
            ("m1", "u1", 1, "b"),
            ("m1", "u1", 2, "c"),
            ("m1", "u1", 3, "a"),  # beyond k
            ("m1", "u2", 1, "c"),
            ("m2", "u1", 1, "a"),
        ],
    )

    out = evaluation.novelty(recs, history, 2)

    # 3 history users. a: 3 users -> p = 4/4 -> 0 bits; b: 1 user -> p = 2/4 -> 1 bit;
    # c: nobody -> p = 1/4 -> 2 bits.  m1 recommends b, c, c -> (1 + 2 + 2) / 3.  m2: a -> 0.
    assert _values(out) == {
        ("m1", "novelty"): pytest.approx(5 / 3),
        ("m2", "novelty"): pytest.approx(0.0, abs=1e-12),
    }
    assert _ks(out) == {2}


# --- paired_comparison -----------------------------------------------------------------------


def _per_user(spark: SparkSession, hr_by_model: dict[str, list[float]]) -> DataFrame:
    """Per-user metrics where every ranking metric of a user equals their HR."""
    rows = [
        (model, f"u{i}", *[float(v)] * len(evaluation.RANKING_METRICS))
        for model, values in hr_by_model.items()
        for i, v in enumerate(values)
    ]
    metrics = ", ".join(f"{m} double" for m in evaluation.RANKING_METRICS)
    return spark.createDataFrame(rows, f"model string, user_id string, {metrics}")


def _comparison(df: DataFrame) -> dict[tuple[str, str], dict]:
    assert df.columns == [
        "model",
        "metric",
        "k",
        "users",
        "difference",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    return {(r["model"], r["metric"]): r.asDict() for r in df.collect()}


def test_paired_comparison_hand_computed(spark):
    per_user = _per_user(
        spark,
        {
            "hybrid": [1, 1, 1, 0],
            "als": [1, 0, 0, 0],  # per-user gaps 0, 1, 1, 0
            "same": [1, 1, 1, 0],  # no gap anywhere
            "worse": [0, 0, 0, -1],  # every user one below: a certain gap
        },
    )

    out = _comparison(evaluation.paired_comparison(per_user, "hybrid", 10, 0.95))

    assert set(out) == {
        (m, metric) for m in ("als", "same", "worse") for metric in evaluation.RANKING_METRICS
    }
    als = out[("als", "hr")]
    # mean 0.5; sample sd sqrt(1/3); se sqrt(1/3)/2 = 0.288675; z(0.975) = 1.959964
    half = 1.959964 * 0.288675
    assert (als["k"], als["users"]) == (10, 4)
    assert als["difference"] == pytest.approx(0.5)
    assert (als["ci_low"], als["ci_high"]) == (
        pytest.approx(0.5 - half, abs=1e-5),
        pytest.approx(0.5 + half, abs=1e-5),
    )
    # two-sided: 2 * (1 - Phi(0.5 / 0.288675 = 1.7321)) = 0.08326
    assert als["p_value"] == pytest.approx(0.08326, abs=1e-4)
    same = out[("same", "ndcg")]
    assert (same["difference"], same["ci_low"], same["ci_high"], same["p_value"]) == (0, 0, 0, 1)
    worse = out[("worse", "map")]
    assert (worse["difference"], worse["p_value"]) == (1, 0)


def test_paired_comparison_wider_interval_at_higher_confidence(spark):
    per_user = _per_user(spark, {"hybrid": [1, 1, 1, 0], "als": [1, 0, 0, 0]})

    at_90 = _comparison(evaluation.paired_comparison(per_user, "hybrid", 10, 0.90))
    at_99 = _comparison(evaluation.paired_comparison(per_user, "hybrid", 10, 0.99))

    # z(0.95) = 1.644854, z(0.995) = 2.575829; the p-value does not depend on the level
    assert at_90[("als", "hr")]["ci_high"] == pytest.approx(0.5 + 1.644854 * 0.288675, abs=1e-5)
    assert at_99[("als", "hr")]["ci_high"] == pytest.approx(0.5 + 2.575829 * 0.288675, abs=1e-5)
    assert at_90[("als", "hr")]["p_value"] == at_99[("als", "hr")]["p_value"]


def test_paired_comparison_one_user_has_no_interval(spark):
    per_user = _per_user(spark, {"hybrid": [1], "als": [0]})

    als = _comparison(evaluation.paired_comparison(per_user, "hybrid", 5, 0.95))[("als", "hr")]

    assert als["difference"] == 1
    assert all(math.isnan(als[f]) for f in ("ci_low", "ci_high", "p_value"))


def test_groups_summarised_in_one_pass_equal_each_group_measured_alone(spark):
    truth = _truth(spark, [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u3", "d"), ("u3", "e")])
    recs = _recs(
        spark,
        [
            ("hybrid", "u1", 1, "a"),
            ("hybrid", "u1", 2, "x"),
            ("hybrid", "u2", 1, "y"),
            ("hybrid", "u2", 2, "c"),
            ("hybrid", "u3", 1, "e"),
            ("als", "u1", 1, "b"),
            ("als", "u2", 1, "c"),
            ("als", "u3", 1, "z"),
            ("als", "u3", 2, "d"),
        ],
    )
    # a user in two groups, a truth row in two groups, and a group without u2
    groups = {
        "all": truth,
        "some": truth.where("item_id in ('b', 'd', 'e')"),
        "one": truth.where("user_id = 'u3'"),
    }
    tagged = None
    for name, rows in groups.items():
        rows = rows.selectExpr("*", f"'{name}' as segment")
        tagged = rows if tagged is None else tagged.unionByName(rows)
    per_user = evaluation.per_user_metrics(recs, tagged, 2, by=("segment",)).cache()

    means, compared = evaluation.summarise(per_user, "hybrid", 2, 0.95, by=("segment",))

    assert means.columns == ["model", "metric", "k", "value", "segment"]
    spark_side = evaluation.mean_metrics(per_user, 2, by=("segment",)).collect()
    assert {r[:3] + r[4:]: r["value"] for r in means.collect()} == pytest.approx(
        {r[:3] + r[4:]: r["value"] for r in spark_side}
    )
    assert compared.columns[-1] == "segment"
    for name, rows in groups.items():
        alone = evaluation.per_user_metrics(recs, rows, 2)
        expected = _values(evaluation.mean_metrics(alone, 2))
        got = _values(means.where(f"segment = '{name}'").drop("segment"))
        assert got == pytest.approx(expected), name
        expected_gap = _comparison(evaluation.paired_comparison(alone, "hybrid", 2, 0.95))
        got_gap = _comparison(compared.where(f"segment = '{name}'").drop("segment"))
        assert set(got_gap) == set(expected_gap), name
        for key, row in expected_gap.items():
            for field in ("users", "difference", "ci_low", "ci_high", "p_value"):
                assert got_gap[key][field] == pytest.approx(row[field], nan_ok=True), (name, key)
    # the group of u3 alone: hybrid hits e at 1 (of d, e), als hits d at 2
    one = _values(means.where("segment = 'one'").drop("segment"))
    assert one[("hybrid", "hr")] == 1.0 and one[("als", "recall")] == 0.5


# --- segment_truth ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segment_data(spark):
    # Distinct history items per truth user: u1 3, u2 1 (one item twice), u3 1, u4 0 (no history).
    # History users per item: i1 {u1, u2} 2, i2 {u1, u3} 2, i3 {u1, u5} 2; t1 only in truth: 0.
    history = _truth(
        spark,
        [
            ("u1", "i1"),
            ("u1", "i2"),
            ("u1", "i3"),
            ("u2", "i1"),
            ("u2", "i1"),
            ("u3", "i2"),
            ("u5", "i3"),  # u5 has no truth: never a sparse user
        ],
    )
    truth = _truth(spark, [("u1", "t1"), ("u2", "i2"), ("u3", "i3"), ("u4", "i1"), ("u4", "t1")])
    return truth, history


def _rows(df: DataFrame) -> list[tuple]:
    return sorted(tuple(r) for r in df.select("user_id", "item_id").collect())


def test_segment_truth_membership_with_ties_broken_by_id(segment_data):
    truth, history = segment_data

    segments = evaluation.segment_truth(truth, history, 0.5)

    assert set(segments) == {"all", "sparse_users", "tail_items"}
    assert _rows(segments["all"]) == _rows(truth)
    # Users by (n, id): u4 0, u2 1, u3 1, u1 3; half of 4 = 2 -> u4 and u2 (u2 < u3 on the tie).
    assert _rows(segments["sparse_users"]) == [("u2", "i2"), ("u4", "i1"), ("u4", "t1")]
    # Items (truth and history) by (n, id): t1 0, i1 2, i2 2, i3 2; half of 4 = 2 -> t1 and i1.
    assert _rows(segments["tail_items"]) == [("u1", "t1"), ("u4", "i1"), ("u4", "t1")]


def test_segment_truth_small_fraction_keeps_at_least_one(segment_data):
    truth, history = segment_data

    segments = evaluation.segment_truth(truth, history, 0.1)

    # 0.1 of 4 rounds to 0: still the single sparsest user (u4) and rarest item (t1).
    assert _rows(segments["sparse_users"]) == [("u4", "i1"), ("u4", "t1")]
    assert _rows(segments["tail_items"]) == [("u1", "t1"), ("u4", "t1")]


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_fewest_matches_a_global_ordering_without_a_global_window(spark, fraction):
    rng = np.random.default_rng(7)
    counts = pd.DataFrame({"key": [f"k{i:03d}" for i in range(200)]})
    counts["n"] = rng.integers(0, 6, len(counts))  # many ties
    wanted = max(1, round(fraction * len(counts)))
    expected = sorted(counts.sort_values(["n", "key"])["key"].head(wanted))

    picked = evaluation.fewest(spark.createDataFrame(counts), "key", fraction)

    assert sorted(r.key for r in picked.collect()) == expected
    # A global window shows as an exchange of every row into one partition.
    plan = picked._jdf.queryExecution().executedPlan().toString()
    assert "Window" in plan and "SinglePartition" not in plan


def test_list_diversity_is_the_same_however_the_lists_are_split_into_batches():
    rng = np.random.default_rng(0)
    rows = []
    for model in ("m1", "m2"):
        for user in range(7):
            for _ in range(rng.integers(1, 6)):
                v = rng.standard_normal(4)
                rows.append((model, f"u{user}", (v / np.linalg.norm(v)).astype(np.float32)))
    frame = pd.DataFrame(rows, columns=["model", "user_id", "embedding"])
    expected = {}
    for (model, user), group in frame.groupby(["model", "user_id"]):
        v = np.stack(group["embedding"].to_numpy()).astype(np.float64)
        pairs = [1 - v[i] @ v[j] for i in range(len(v)) for j in range(i + 1, len(v))]
        if pairs:
            expected[(model, user)] = np.mean(pairs)
    for cuts in ([], [1], [3, 4, 5], list(range(1, len(frame)))):
        batches = np.split(frame, cuts)
        out = pd.concat(evaluation._list_diversity(iter(batches)), ignore_index=True)
        got = dict(zip(zip(out["model"], out["user_id"], strict=True), out["ild"], strict=True))
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9)


# --- reason_shares ---------------------------------------------------------------------------


def test_reason_shares_count_each_kind_within_the_top_k(spark):
    rows = [
        ("hybrid", "u1", 1, "a", "liked by similar users"),
        ("hybrid", "u1", 2, "b", "often had with x"),
        ("hybrid", "u1", 3, "c", "similar to y"),
        ("hybrid", "u1", 4, "h", "often had after z"),
        ("hybrid", "u2", 1, "a", "matches your reviews"),
        ("hybrid", "u2", 2, "d", "popular"),
        ("hybrid", "u2", 3, "e", "ranked by the remaining signals"),
        ("hybrid", "u2", 4, "f", "often had with your items"),
        ("hybrid", "u2", 5, "g", "popular"),  # beyond k = 4
        ("ease", "u1", 1, "a", None),  # a model without reasons has no shares
    ]
    recs = spark.createDataFrame(
        rows, "model string, user_id string, rank int, item_id string, reason string"
    )
    shares = _values(evaluation.reason_shares(recs, 4))
    assert shares == {
        ("hybrid", "reason_cf"): pytest.approx(1 / 8),
        ("hybrid", "reason_cooc"): pytest.approx(2 / 8),
        ("hybrid", "reason_text"): pytest.approx(2 / 8),
        ("hybrid", "reason_next"): pytest.approx(1 / 8),
        ("hybrid", "reason_pop"): pytest.approx(1 / 8),
        ("hybrid", "reason_none"): pytest.approx(1 / 8),
    }
