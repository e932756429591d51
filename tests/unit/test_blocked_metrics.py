"""hybridrec.evaluation.blocked (sums in numpy blocks, one pass over users) against the Spark SQL
definitions in hybridrec.evaluation.metrics: the same means, paired comparisons, coverage,
diversity and novelty on random lists, whatever the block size."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame

from hybridrec.evaluation import blocked
from hybridrec.evaluation import metrics as evaluation
from udfs.metric_kernel import whole_users

K = 5
MODELS = ("hybrid", "als", "pop", "quiet")


@pytest.fixture(scope="module")
def lists_and_truth(spark):
    rng = np.random.default_rng(7)
    items = [f"i{j:03d}" for j in range(60)]
    users = [f"u{j:03d}" for j in range(90)]
    recs = []
    for model in MODELS[:-1]:  # "quiet" recommends one user only: the rest score zero for it
        for user in users[: 80 if model == "pop" else 90]:
            picks = rng.choice(items[:40] if model == "pop" else items, 7, replace=False)
            recs += [(model, user, rank, item) for rank, item in enumerate(picks, 1)]
    recs.append(("quiet", users[0], 1, items[0]))
    recs.append(("hybrid", "u999", 1, "elsewhere"))  # a user without truth, an unknown item
    truth = [
        (user, str(item))
        for user in users[:85]
        for item in rng.choice(items, rng.integers(1, 4), replace=False)
    ]
    truth.append((users[0], items[0]))  # the same truth row twice is one relevant item
    vectors = rng.normal(size=(len(items), 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    history = [(user, str(item)) for user in users for item in rng.choice(items, 3)]
    return (
        spark.createDataFrame(recs, "model string, user_id string, rank int, item_id string"),
        spark.createDataFrame(truth, "user_id string, item_id string"),
        spark.createDataFrame(
            [
                (item, [float(x) for x in v])
                for item, v in list(zip(items, vectors, strict=True))[:50]
            ],
            "id string, embedding array<float>",
        ),
        spark.createDataFrame(history, "user_id string, item_id string"),
        np.array(sorted(items), dtype=object),
    )


def _segments(truth: DataFrame) -> DataFrame:
    groups = {
        "all": truth,
        "some": truth.where("item_id < 'i020'"),
        "few": truth.where("user_id < 'u010'"),
        "none": truth.where("user_id = 'nobody'"),
    }
    return reduce(
        DataFrame.unionByName,
        [rows.selectExpr("*", f"'{name}' as segment") for name, rows in groups.items()],
    )


def _by_key(df: DataFrame, key: tuple[str, ...]) -> dict:
    return {tuple(r[c] for c in key): r.asDict() for r in df.collect()}


@pytest.mark.parametrize("block_users", [1, 1000])
def test_blocked_metrics_equal_spark_sql(spark, lists_and_truth, block_users):
    recs, truth, vectors, history, item_ids = lists_and_truth
    tagged = _segments(truth).cache()
    per_user = evaluation.per_user_metrics(recs, tagged, K, by=("segment",))
    means, compared = evaluation.summarise(per_user, "hybrid", K, 0.95, by=("segment",))
    lists = [
        evaluation.catalog_coverage(recs, 64, K),
        evaluation.intra_list_diversity(recs, vectors, K),
        evaluation.novelty(recs, history, K),
    ]
    expected_means = _by_key(
        reduce(
            DataFrame.unionByName, [means, *[m.selectExpr("*", "'all' segment") for m in lists]]
        ),
        ("model", "metric", "segment"),
    )
    expected_gaps = _by_key(compared, ("model", "metric", "segment"))

    context = blocked.list_context(
        recs, ["all", "some", "few", "none"], "hybrid", K, item_ids, vectors, history
    )
    sums = blocked.list_sums(recs, tagged, context, block_users)
    got_means, got_compared = blocked.metrics_from_sums(spark, sums, context, 64, 0.95)

    got = _by_key(got_means, ("model", "metric", "segment"))
    assert set(got) == set(expected_means)
    assert not any(key[2] == "none" for key in got)  # a segment without users has no figures
    for key, row in expected_means.items():
        assert got[key]["value"] == pytest.approx(row["value"], rel=1e-9, abs=1e-12), key
        assert got[key]["k"] == K
    gaps = _by_key(got_compared, ("model", "metric", "segment"))
    assert set(gaps) == set(expected_gaps) and expected_gaps
    for key, row in expected_gaps.items():
        for field in ("users", "difference", "ci_low", "ci_high", "p_value"):
            assert gaps[key][field] == pytest.approx(row[field], rel=1e-7, abs=1e-12), (key, field)
    assert got_compared.columns == compared.columns


def test_a_model_equal_to_the_reference_has_no_spread(spark, lists_and_truth):
    recs, truth, vectors, history, item_ids = lists_and_truth
    twin = recs.where("model = 'hybrid'").selectExpr(
        "'twin' as model", "user_id", "rank", "item_id"
    )
    both = recs.where("model = 'hybrid'").unionByName(twin)
    tagged = truth.selectExpr("*", "'all' as segment")
    context = blocked.list_context(both, ["all"], "hybrid", K, item_ids, vectors, history)
    sums = blocked.list_sums(both, tagged, context, 3)
    _, compared = blocked.metrics_from_sums(spark, sums, context, 64, 0.95)
    rows = compared.collect()
    assert rows and all(r["difference"] == 0 and r["p_value"] == 1.0 for r in rows)
    assert all(r["ci_low"] == 0 and r["ci_high"] == 0 for r in rows)


def test_whole_users_never_split_a_user_across_blocks():
    rows = pd.DataFrame({"user_id": list("aaabbbbccdddddde"), "x": range(16)})
    batches = [rows.iloc[i : i + 3] for i in range(0, 16, 3)]
    for block_rows in (1, 4, 100):
        blocks = list(whole_users(iter(batches), block_rows))
        users = [set(b["user_id"]) for b in blocks]
        assert sum(len(b) for b in blocks) == 16
        for i, one in enumerate(users):
            assert not any(one & other for other in users[i + 1 :])
        if block_rows == 100:
            assert len(blocks) == 1
    assert math.isclose(sum(b["x"].sum() for b in whole_users(iter(batches), 5)), 120)
