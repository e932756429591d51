"""Pure transforms of the evaluate stage: top-K ranking metrics in Spark SQL.

Inputs are recommendations (model, user_id, rank, item_id) and the held-out truth (user_id,
item_id); ``history`` is what the evaluated models were fitted on.
A user with held-out items but no recommendations from a model scores zero for it, so
a model cannot look better by staying silent.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.constants import EMBEDDING_COL, ITEM_COL, TEXT_PARTS, USER_COL
from udfs import reasons

RANKING_METRICS = ("ndcg", "hr", "precision", "recall", "map")


def per_user_metrics(
    recs: DataFrame, truth: DataFrame, k: int, *, by: tuple[str, ...] = ()
) -> DataFrame:
    """Per (model, user with truth): the five ranking metrics at k. ``by``: columns of ``truth``
    that split it into groups (segments) measured apart in the same pass, one row per
    (model, user, group); they come last."""
    keys = [*by, USER_COL]
    relevant = truth.select(*keys, ITEM_COL).distinct()
    n_rel = relevant.groupBy(*keys).agg(F.count(F.lit(1)).alias("n_rel"))
    top = recs.where(F.col("rank") <= k).select("model", USER_COL, "rank", ITEM_COL)
    hit_order = Window.partitionBy("model", *keys).orderBy("rank")
    hits = (
        top.join(relevant, [USER_COL, ITEM_COL])
        .withColumn("hit_pos", F.row_number().over(hit_order))
        .groupBy("model", *keys)
        .agg(
            F.sum(1.0 / F.log2(F.col("rank") + 1)).alias("dcg"),
            F.count(F.lit(1)).alias("n_hits"),
            F.sum(F.col("hit_pos") / F.col("rank")).alias("ap_sum"),
        )
    )
    models = recs.select("model").distinct()
    # users x models (a handful of models), never users x items
    base = (
        n_rel.crossJoin(models)
        .join(hits, ["model", *keys], "left")
        .fillna(0, subset=["dcg", "n_hits", "ap_sum"])
    )
    cutoff = F.least(F.lit(k), F.col("n_rel"))
    idcg = F.aggregate(
        F.sequence(F.lit(1), cutoff), F.lit(0.0), lambda acc, i: acc + 1.0 / F.log2(i + 1)
    )
    return base.select(
        "model",
        USER_COL,
        (F.col("dcg") / idcg).alias("ndcg"),
        (F.col("n_hits") > 0).cast("double").alias("hr"),
        (F.col("n_hits") / F.lit(float(k))).alias("precision"),
        (F.col("n_hits") / F.col("n_rel")).alias("recall"),
        (F.col("ap_sum") / cutoff).alias("map"),
        *by,
    )


def ranking_metrics(recs: DataFrame, truth: DataFrame, k: int) -> DataFrame:
    """NDCG, HR, precision, recall and MAP at k (MAP divides by min(k, relevant)), averaged over
    the users that have truth. Long format: model, metric, k, value."""
    return mean_metrics(per_user_metrics(recs, truth, k), k)


def mean_metrics(per_user: DataFrame, k: int, *, by: tuple[str, ...] = ()) -> DataFrame:
    """The long-format means of ``per_user_metrics``, per model (and ``by`` group, last)."""
    means = per_user.groupBy("model", *by).agg(*[F.avg(m).alias(m) for m in RANKING_METRICS])
    return _long(means, RANKING_METRICS, k, by=by)


MEANS_SCHEMA = "model string, metric string, k int, value double"
COMPARISON_SCHEMA = (
    "model string, metric string, k int, users long, difference double, "
    "ci_low double, ci_high double, p_value double"
)


def paired_comparison(
    per_user: DataFrame,
    reference: str,
    k: int,
    confidence: float,
    *,
    by: tuple[str, ...] = (),
) -> DataFrame:
    """``reference`` against every other model, paired by user: the mean per-user difference
    (reference minus model) of each ranking metric, its ``confidence`` interval and two-sided
    p-value (normal approximation of the paired mean, sound at the hundreds of users a segment
    holds). Pairing matters: both models rank the same users, so the spread of the per-user
    differences, not of each model's scores, says whether a gap is more than noise. ``by``:
    groups (string columns of ``per_user``) compared apart, last in the result."""
    return summarise(per_user, reference, k, confidence, by=by)[1]


def summarise(
    per_user: DataFrame,
    reference: str,
    k: int,
    confidence: float,
    *,
    by: tuple[str, ...] = (),
) -> tuple[DataFrame, DataFrame]:
    """``mean_metrics`` and ``paired_comparison`` of ``per_user`` from one Spark job: each model's
    rows meet their user's ``reference`` row (a left join: a user the reference missed still
    counts in the model's means), and one aggregation per (model, group) gives both. Only those
    rows reach the driver, for the p-values; both results are small local DataFrames."""
    keys = [*by, USER_COL]
    ref = per_user.where(F.col("model") == reference).select(
        *keys, *[F.col(m).alias(f"_ref_{m}") for m in RANKING_METRICS]
    )
    diff = {m: F.col(f"_ref_{m}") - F.col(m) for m in RANKING_METRICS}
    summary = (
        per_user.join(ref, keys, "left")
        .groupBy("model", *by)
        .agg(
            *[F.avg(m).alias(f"mean_{m}") for m in RANKING_METRICS],
            F.count(F.col(f"_ref_{RANKING_METRICS[0]}")).alias("paired"),
            *[F.avg(d).alias(f"diff_{m}") for m, d in diff.items()],
            *[F.stddev_samp(d).alias(f"sd_{m}") for m, d in diff.items()],
        )
        .collect()  # one row per (model, group)
    )
    rows = [row.asDict() for row in summary]
    return summary_frames(per_user.sparkSession, rows, reference, k, confidence, by=by)


def summary_frames(
    spark,
    rows: list[dict],
    reference: str,
    k: int,
    confidence: float,
    *,
    by: tuple[str, ...] = (),
) -> tuple[DataFrame, DataFrame]:
    """The means and paired comparisons (small local DataFrames) from one row per (model,
    ``by`` group): ``mean_<metric>``, ``paired`` (users with a reference value),
    ``diff_<metric>`` (mean of reference minus model) and ``sd_<metric>`` (their sample
    standard deviation)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    means, compared = [], []
    for r in rows:
        groups = [r[c] for c in by]
        means += [(r["model"], m, k, r[f"mean_{m}"], *groups) for m in RANKING_METRICS]
        if r["model"] == reference or not r["paired"]:
            continue
        for m in RANKING_METRICS:
            gap, lo, hi, p = r[f"diff_{m}"], math.nan, math.nan, math.nan
            if r["paired"] > 1:  # one user has no spread to weigh a gap against
                se = r[f"sd_{m}"] / math.sqrt(r["paired"])
                lo, hi = gap - z * se, gap + z * se
                # se 0: every user moved by the same amount, a certain gap (or none)
                p = math.erfc(abs(gap) / se / math.sqrt(2)) if se > 0 else float(gap == 0)
            compared.append((r["model"], m, k, r["paired"], gap, lo, hi, p, *groups))
    extra = [f"{c} string" for c in by]
    return (
        spark.createDataFrame(means, ", ".join([MEANS_SCHEMA, *extra])),
        spark.createDataFrame(compared, ", ".join([COMPARISON_SCHEMA, *extra])),
    )


def catalog_coverage(recs: DataFrame, n_items: int, k: int) -> DataFrame:
    """Share of the catalog that appears in at least one top-k list."""
    covered = (
        recs.where(F.col("rank") <= k)
        .groupBy("model")
        .agg((F.countDistinct(ITEM_COL) / F.lit(float(n_items))).alias("coverage"))
    )
    return _long(covered, ("coverage",), k)


def intra_list_diversity(recs: DataFrame, item_vectors: DataFrame, k: int) -> DataFrame:
    """Mean over users of the mean pairwise cosine distance between their top-k items' text
    vectors (users with fewer than two vectors have no pair and no value).

    The pairs' dot products sum to (|sum of v|^2 - sum of |v|^2) / 2, so each list's vectors are
    read once and summed, never joined with themselves (k^2 / 2 rows of two vectors each).
    """
    top = recs.where(F.col("rank") <= k).join(
        item_vectors.select(F.col("id").alias(ITEM_COL), EMBEDDING_COL), ITEM_COL
    )
    partitions = recs.sparkSession.sparkContext.defaultParallelism * 2
    lists = (
        top.select("model", USER_COL, EMBEDDING_COL)
        .repartition(partitions, "model", USER_COL)
        .sortWithinPartitions("model", USER_COL)
    )
    per_user = lists.mapInPandas(_list_diversity, f"model string, {USER_COL} string, ild double")
    return _long(per_user.groupBy("model").agg(F.avg("ild").alias("diversity")), ("diversity",), k)


def _list_diversity(batches):
    """Per (model, user) of rows sorted by both: 1 - the mean dot product of the list's pairs.
    A list that straddles two Arrow batches is held back until its last row has arrived."""
    held = None
    for batch in batches:
        frame = batch if held is None else pd.concat([held, batch], ignore_index=True)
        if frame.empty:
            continue
        last = (frame["model"] == frame["model"].iloc[-1]) & (
            frame[USER_COL] == frame[USER_COL].iloc[-1]
        )
        held = frame[last]
        done = frame[~last]
        if len(done):
            yield _diversity_of_lists(done)
    if held is not None and len(held):
        yield _diversity_of_lists(held)


def _diversity_of_lists(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame["model"] + "\x00" + frame[USER_COL]
    codes, _ = pd.factorize(keys)
    vectors = np.stack(frame[EMBEDDING_COL].to_numpy()).astype(np.float64)
    sums = pd.DataFrame(vectors).groupby(codes).sum().to_numpy()
    squares = np.bincount(codes, weights=np.square(vectors).sum(axis=1))
    counts = np.bincount(codes)
    first = np.unique(codes, return_index=True)[1]
    pairs = counts * (counts - 1) / 2
    keep = pairs > 0
    dots = (np.square(sums).sum(axis=1) - squares) / 2
    return pd.DataFrame(
        {
            "model": frame["model"].to_numpy()[first][keep],
            USER_COL: frame[USER_COL].to_numpy()[first][keep],
            "ild": 1.0 - dots[keep] / pairs[keep],
        }
    )


def novelty(recs: DataFrame, history: DataFrame, k: int) -> DataFrame:
    """Mean self-information -log2(p) of recommended items, p = share of history users who have
    the item (add-one smoothed, so an item nobody had is the most novel, not infinite)."""
    n_users = history.select(USER_COL).distinct().count()
    item_users = history.groupBy(ITEM_COL).agg(F.countDistinct(USER_COL).alias("n"))
    p = (F.coalesce(F.col("n"), F.lit(0)) + 1) / F.lit(float(n_users + 1))
    scored = recs.where(F.col("rank") <= k).join(item_users, ITEM_COL, "left")
    return _long(scored.groupBy("model").agg(F.avg(-F.log2(p)).alias("novelty")), ("novelty",), k)


REASON_KINDS = ("cf", "cooc", "text", "next", "pop", "none")


def reason_kind() -> Column:
    """The part a ``reason`` text names: cf, cooc, text (own reviews or recent items), next,
    pop, or none (no weighted part was defined for the pick)."""
    reason = F.col("reason")
    kind = F.when(reason == reasons.REASONS["cf"], "cf").when(
        reason == reasons.REASONS["pop"], "pop"
    )
    # Every part that names a history item, so a new one is counted without a change here;
    # both text parts count as text.
    for part, (prefix, fallback) in reasons.NAMED_REASONS.items():
        kind_name = "text" if part in TEXT_PARTS else part
        kind = kind.when(reason.startswith(prefix) | (reason == fallback), kind_name)
    return kind.otherwise("none")


def reason_shares(recs: DataFrame, k: int) -> DataFrame:
    """Per model with reasons: the share of its top-k rows explained by each reason kind
    (``reason_<kind>``, every kind present, 0 where none)."""
    top = recs.where((F.col("rank") <= k) & F.col("reason").isNotNull())
    wide = top.groupBy("model").agg(
        *[
            F.avg((reason_kind() == F.lit(kind)).cast("double")).alias(f"reason_{kind}")
            for kind in REASON_KINDS
        ]
    )
    return _long(wide, tuple(f"reason_{kind}" for kind in REASON_KINDS), k)


def _long(wide: DataFrame, metrics, k: int, *, by: tuple[str, ...] = ()) -> DataFrame:
    stack = ", ".join(f"'{m}', cast({m} as double)" for m in metrics)
    return wide.selectExpr(
        "model", *by, f"stack({len(metrics)}, {stack}) as (metric, value)"
    ).select("model", "metric", F.lit(k).alias("k"), "value", *by)


def segment_truth(truth: DataFrame, history: DataFrame, fraction: float) -> dict[str, DataFrame]:
    """The held-out truth of each segment.

    ``sparse_users``: the ``fraction`` of truth users with the fewest history items.
    ``tail_items``: truth rows whose item is among the ``fraction`` of catalog items with the
    fewest history users. Both are where text has to carry what CF cannot.
    """
    user_items = history.groupBy(USER_COL).agg(F.countDistinct(ITEM_COL).alias("n"))
    users = truth.select(USER_COL).distinct().join(user_items, USER_COL, "left").fillna(0, ["n"])
    items = truth.select(ITEM_COL).unionByName(history.select(ITEM_COL)).distinct()
    item_users = history.groupBy(ITEM_COL).agg(F.countDistinct(USER_COL).alias("n"))
    items = items.join(item_users, ITEM_COL, "left").fillna(0, ["n"])
    sparse = fewest(users, USER_COL, fraction)
    tail = fewest(items, ITEM_COL, fraction)
    return {
        "all": truth,
        "sparse_users": truth.join(sparse.select(USER_COL), USER_COL, "left_semi"),
        "tail_items": truth.join(tail.select(ITEM_COL), ITEM_COL, "left_semi"),
    }


def fewest(counts: DataFrame, key: str, fraction: float) -> DataFrame:
    """The ``fraction`` of ``counts`` rows (``key``, ``n``) with the smallest ``n``, ties broken
    by ``key``: exactly what a global ``row_number() over (order by n, key)`` would pick, without
    moving every row to one partition. The histogram of ``n`` (one row per distinct count) finds
    the cutoff count; only the rows at the cutoff are ranked, within their count."""
    histogram = counts.groupBy("n").count().orderBy("n").collect()
    wanted = max(1, round(fraction * sum(row["count"] for row in histogram)))
    below = 0
    cutoff, at_cutoff = None, 0
    for row in histogram:
        if below + row["count"] >= wanted:
            cutoff, at_cutoff = row["n"], wanted - below
            break
        below += row["count"]
    if cutoff is None:
        return counts.select(key)
    ranked = counts.where(F.col("n") == cutoff).withColumn(
        "_r", F.row_number().over(Window.partitionBy("n").orderBy(key))
    )
    return (
        counts.where(F.col("n") < cutoff)
        .select(key)
        .unionByName(ranked.where(F.col("_r") <= at_cutoff).select(key))
    )
