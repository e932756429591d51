"""Each row's best matches by dot product in another set of vectors, in Spark, never collected.

Both sides are cut into blocks (hash of the key); every pair of a left block and a right block is
one task (a replicated nested-loop join of the block rows, never a broadcast of either side) that
multiplies the two with numpy and keeps each left row's best ``n`` of that right block; the best
``n`` over all right blocks are then kept per left row. Work and memory per task are bounded by the
block sizes, so neither side has to fit on the driver or in one task: the cost is the product of
the two sides' sizes spread over the cluster. Used for the ALS top-N of every user (user factors
against item factors) and for the text neighbours of every item (item vectors against themselves).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from udfs.ranking_kernel import closest_items

# Left rows per block (at least one block per task slot): with right blocks of at most
# ``right_block_rows``, one task's product stays within LEFT_BLOCK_ROWS x right_block_rows.
LEFT_BLOCK_ROWS = 20_000
# Scores one numpy product may hold at once (float32: ~200 MB).
PRODUCT_CELLS = 50_000_000


def keep_best(df: DataFrame, key: str, other: str, score: str, n: int) -> DataFrame:
    """The ``n`` rows of highest ``score`` per ``key``; ties go to the smaller ``other``."""
    order = Window.partitionBy(key).orderBy(F.col(score).desc(), F.col(other))
    return df.withColumn("_r", F.row_number().over(order)).where(F.col("_r") <= n).drop("_r")


def _blocks(df: DataFrame, key: str, vector: str, count: int, name: str) -> DataFrame:
    return (
        df.select(key, vector)
        .withColumn(name, F.pmod(F.xxhash64(key), F.lit(count)))
        .groupBy(name)
        .agg(
            F.collect_list(F.struct(F.col(key).alias("k"), F.col(vector).alias("v"))).alias("rows")
        )
        .select(F.col("rows").alias(name))
    )


def _unpack(rows) -> tuple[np.ndarray, np.ndarray]:
    # Arrow hands an array of structs over as dicts.
    ids = np.array([r["k"] for r in rows], dtype=object)
    return ids, np.stack([r["v"] for r in rows]).astype(np.float32)


def block_best(
    left_ids: np.ndarray,
    left: np.ndarray,
    right_ids: np.ndarray,
    right: np.ndarray,
    n: int,
    skip_same_id: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left id, right id, score) of each left row's best ``n`` right rows by dot product, best
    first; with ``skip_same_id`` a row never matches the right row of its own id."""
    same = (
        pd.Index(right_ids).get_indexer(left_ids)
        if skip_same_id
        else np.full(len(left_ids), -1, np.int64)
    )
    step = max(1, PRODUCT_CELLS // max(1, len(right_ids)))
    out_left, out_right, out_score = [], [], []
    for start in range(0, len(left_ids), step):
        rows = slice(start, start + step)
        best, scores = closest_items(left[rows], right, same[rows], n)
        scores = scores.ravel()
        kept = np.isfinite(scores)
        out_left.append(np.repeat(left_ids[rows], best.shape[1])[kept])
        out_right.append(right_ids[best.ravel()][kept])
        out_score.append(scores[kept])
    return np.concatenate(out_left), np.concatenate(out_right), np.concatenate(out_score)


def top_by_dot(
    left: DataFrame,
    right: DataFrame,
    keys: tuple[str, str],
    vectors: tuple[str, str],
    score: str,
    n: int,
    right_block_rows: int,
    skip_same_id: bool = False,
) -> DataFrame:
    """``keys[0]``, ``keys[1]``, ``score`` (float): per row of ``left``, the ``n`` rows of
    ``right`` of highest dot product of ``vectors[0]`` with ``vectors[1]``. ``right_block_rows``
    bounds the right rows one task holds; ``skip_same_id`` leaves out a match of a row with the
    right row of the same key value (an item is not its own neighbour: pass the table as both
    sides, its key renamed on the right)."""
    left_key, right_key = keys
    spark = left.sparkSession
    schema = f"{left_key} string, {right_key} string, {score} float"
    n_right = right.count()
    n_left = left.count()
    if n == 0 or n_right == 0 or n_left == 0:
        return spark.createDataFrame([], schema)
    right_blocks = max(1, math.ceil(n_right / right_block_rows))
    left_blocks = max(spark.sparkContext.defaultParallelism, math.ceil(n_left / LEFT_BLOCK_ROWS))
    pairs = (
        _blocks(left, left_key, vectors[0], left_blocks, "left_block")
        .hint("shuffle_replicate_nl")
        .join(_blocks(right, right_key, vectors[1], right_blocks, "right_block"))
    )

    def best(batches):
        for batch in batches:
            for left_rows, right_rows in zip(
                batch["left_block"], batch["right_block"], strict=True
            ):
                found = block_best(*_unpack(left_rows), *_unpack(right_rows), n, skip_same_id)
                yield pd.DataFrame(dict(zip((left_key, right_key, score), found, strict=True)))

    matches = pairs.mapInPandas(best, schema)
    if right_blocks == 1:  # one right block: each left row's best are already final
        return matches
    return keep_best(matches, left_key, right_key, score, n)
