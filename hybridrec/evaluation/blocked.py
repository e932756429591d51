"""Every model's metrics in one pass over the users, their sums made in numpy blocks.

Where the catalog is held in memory (``RankingMode.catalog_broadcast``), the evaluate stage
measures its lists this way instead of with ``hybridrec.evaluation.metrics``' Spark SQL (a join
of every list row with the truth, a window, a per-user table joined with its reference rows, and
a pass each for coverage, diversity and novelty, with the item vectors joined to every row).
Here the list rows and the tagged truth meet once, moved by user; each task adds up its users in
``udfs.metric_kernel`` and hands the driver a few hundred sums, from which the same means,
paired comparisons (mean and sample deviation of per-user differences) and list metrics follow.
The Spark SQL functions stay the definition: the tests hold both paths to the same figures.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.constants import EMBEDDING_COL, ITEM_COL, USER_COL
from hybridrec.evaluation.metrics import MEANS_SCHEMA, RANKING_METRICS, summary_frames
from hybridrec.ranking import blocks
from udfs.metric_kernel import ListContext, ListSums, whole_users

SEGMENT = "segment"
# The per-model means of the lists: metric -> (the sum's kind, the count's kind)
LIST_MEANS = {
    "diversity": ("diversity_sum", "diversity_lists"),
    "novelty": ("novelty_sum", "novelty_rows"),
}
SUMS_SCHEMA = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("model", T.StringType()),
        T.StructField(SEGMENT, T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("bits", T.BinaryType()),
    ]
)


def list_context(
    recs: DataFrame,
    segments: list[str],
    reference: str,
    k: int,
    item_ids: np.ndarray,
    item_vectors: DataFrame,
    history: DataFrame,
) -> ListContext:
    """What the tasks share: the models found in ``recs``, the catalog's vectors (``id``,
    ``embedding``) and each item's novelty in ``history`` (bounded by the catalog)."""
    models = sorted(r["model"] for r in recs.select("model").distinct().collect())
    items = pd.Index(item_ids)
    vectors_frame = item_vectors.select(F.col("id").alias(ITEM_COL), EMBEDDING_COL).toPandas()
    row = items.get_indexer(vectors_frame[ITEM_COL])
    vectors_frame = vectors_frame[row >= 0]
    row = row[row >= 0]
    dim = len(vectors_frame[EMBEDDING_COL].iloc[0]) if len(vectors_frame) else 1
    vectors = np.zeros((len(items), dim), dtype=np.float32)
    has_vector = np.zeros(len(items), dtype=bool)
    if len(row):
        vectors[row] = np.stack(vectors_frame[EMBEDDING_COL].to_numpy()).astype(np.float32)
        has_vector[row] = True
    n_users = history.select(USER_COL).distinct().count()
    counts = (
        history.groupBy(ITEM_COL).agg(F.countDistinct(USER_COL).alias("n")).toPandas()
    )  # one row per item
    users_of_item = np.zeros(len(items))
    at = items.get_indexer(counts[ITEM_COL])
    users_of_item[at[at >= 0]] = counts["n"].to_numpy()[at >= 0]
    # add-one smoothed, as metrics.novelty
    information = -np.log2((users_of_item + 1) / (n_users + 1))
    return ListContext(
        models=models,
        segments=list(segments),
        reference=reference,
        k=k,
        items=items,
        vectors=vectors,
        has_vector=has_vector,
        information=information,
        unknown_information=float(-np.log2(1 / (n_users + 1))),
    )


def list_sums(
    recs: DataFrame, tagged_truth: DataFrame, context: ListContext, block_users: int
) -> pd.DataFrame:
    """The sums of every task (``ListSums.rows``), on the driver: list rows (model, user_id,
    rank, item_id; top k) and truth rows (segment, user_id, item_id) moved together by user and
    added up in blocks of about ``block_users`` users."""
    block_rows = block_users * context.k * len(context.models)
    lists = recs.where(F.col("rank") <= context.k).select(
        "model", USER_COL, "rank", ITEM_COL, F.lit(None).cast("string").alias(SEGMENT)
    )
    truth = tagged_truth.select(
        F.lit(None).cast("string").alias("model"),
        USER_COL,
        F.lit(None).cast("int").alias("rank"),
        ITEM_COL,
        SEGMENT,
    )
    spark = recs.sparkSession
    shared = spark.sparkContext.broadcast(context)
    clock = blocks.kernel_clock(spark)

    def add_up(batches):
        sums = ListSums(shared.value)
        for block in whole_users(batches, block_rows):
            started = time.perf_counter()
            sums.add(block)
            clock.add(time.perf_counter() - started)
        yield sums.rows()

    partitions = spark.sparkContext.defaultParallelism * 2
    try:
        return (
            lists.unionByName(truth)
            .repartition(partitions, USER_COL)
            .sortWithinPartitions(USER_COL)
            .mapInPandas(add_up, SUMS_SCHEMA)
            .toPandas()  # a few hundred rows per task: sums, not users
        )
    finally:
        shared.destroy()


def metrics_from_sums(
    spark, sums: pd.DataFrame, context: ListContext, n_items: int, confidence: float
) -> tuple[DataFrame, DataFrame]:
    """The evaluate stage's two tables from the tasks' sums: every ranking metric's mean per
    (model, segment) with the paired comparisons against the reference; coverage, diversity and
    novelty per model (segment ``all``), as ``metrics.summarise`` and its siblings give them."""
    k = context.k
    # every (kind, model, segment, metric) summed over tasks, once
    totals = sums.groupby(["kind", "model", SEGMENT, "metric"], dropna=False)["value"].sum()

    def total(kind, model, segment, metric) -> float:
        return float(totals.get((kind, model, segment, metric), 0.0))

    # the per-model sums (no segment or metric: keys pandas would hold as NaN above)
    per_model_totals = sums.groupby(["kind", "model"])["value"].sum()

    def model_total(kind, model) -> float:
        return float(per_model_totals.get((kind, model), 0.0))

    users = sums[sums["kind"] == "users"].groupby(SEGMENT)["value"].sum()
    paired = context.reference in context.models
    rows = []
    for segment, n in users.items():
        n = float(n)
        if n == 0:
            continue
        for model in context.models:
            row = {"model": model, SEGMENT: segment, "paired": int(n) if paired else 0}
            for metric in RANKING_METRICS:
                squares = total("diff_sumsq", model, segment, metric)
                gap = total("diff_sum", model, segment, metric) / n
                spread = (squares - n * gap * gap) / (n - 1) if n > 1 else math.nan
                # a spread below rounding is none: every user moved by the same amount
                floor = 1e-12 * max(1.0, squares / n)
                row[f"mean_{metric}"] = total("sum", model, segment, metric) / n
                row[f"diff_{metric}"] = gap
                row[f"sd_{metric}"] = math.sqrt(spread) if spread > floor else 0.0
            rows.append(row)
    means, comparisons = summary_frames(
        spark, rows, context.reference, k, confidence, by=(SEGMENT,)
    )
    per_model = []
    for model in context.models:
        for metric, (summed, count) in LIST_MEANS.items():
            if model_total(count, model) > 0:
                per_model.append(
                    (model, metric, model_total(summed, model) / model_total(count, model))
                )
        of_model = sums[sums["model"] == model]
        covered = np.zeros(len(context.items), dtype=bool)
        for packed in of_model.loc[of_model["kind"] == "covered", "bits"]:
            covered |= np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: len(covered)] > 0
        elsewhere = of_model.loc[of_model["kind"] == "covered_elsewhere", "metric"].nunique()
        per_model.append((model, "coverage", (int(covered.sum()) + elsewhere) / float(n_items)))
    lists = spark.createDataFrame(
        [(model, metric, k, value, "all") for model, metric, value in per_model],
        f"{MEANS_SCHEMA}, {SEGMENT} string",
    )
    return means.unionByName(lists), comparisons
