"""Running a numpy kernel over blocks of users in Spark tasks, and timing it.

``map_user_blocks`` hands each task's users to a kernel in blocks against a broadcast value;
``map_with_broadcast`` does the same and materialises the result so that the broadcast can be
freed at once; ``kernel_clock`` sums the seconds the kernel took in the tasks, and
``driver_kernel`` the seconds of numpy arithmetic the driver does between them (EASE's inverse):
the score and evaluate jobs report both next to their wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from pyspark import Accumulator, Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from hybridrec.constants import USER_COL

_CLOCKS: dict[tuple[int, str], Accumulator] = {}
_DRIVER_SECONDS: dict[int, float] = {}


def kernel_clock(spark: SparkSession) -> Accumulator:
    """Seconds the tasks of this SparkContext have spent in the ranking kernel
    (``map_user_blocks``' ``score_block``), summed over tasks: the score and evaluate jobs report
    theirs next to their wall time, so the share of Spark's plumbing is a measured figure."""
    return _clock(spark, "ranking")


def boosting_clock(spark: SparkSession) -> Accumulator:
    """Seconds the learned ranker's xgboost fits have spent in their boosting rounds, summed
    over training tasks (``udfs.learned_ranker.BoostingClock``): arithmetic of the work, as the
    ranking kernel's is, reported beside it."""
    return _clock(spark, "boosting")


def _clock(spark: SparkSession, name: str) -> Accumulator:
    context = spark.sparkContext
    key = (id(context), name)
    if key not in _CLOCKS:
        _CLOCKS[key] = context.accumulator(0.0)
    return _CLOCKS[key]


@contextmanager
def driver_kernel(spark: SparkSession) -> Iterator[None]:
    """Count the block's seconds as kernel time spent on the driver: numpy arithmetic of the
    work itself (an inverse, a sort of a Gram matrix), not Spark's plumbing. Wall seconds: the
    driver's BLAS uses every core it has."""
    started = time.perf_counter()
    try:
        yield
    finally:
        key = id(spark.sparkContext)
        _DRIVER_SECONDS[key] = _DRIVER_SECONDS.get(key, 0.0) + time.perf_counter() - started


def driver_kernel_seconds(spark: SparkSession) -> float:
    """The seconds ``driver_kernel`` has counted in this SparkContext so far."""
    return _DRIVER_SECONDS.get(id(spark.sparkContext), 0.0)


def map_user_blocks(
    users: DataFrame, shared: Broadcast, block_rows: int, schema: T.StructType, score_block
) -> DataFrame:
    """Run ``score_block(block, shared.value)`` over blocks of ``block_rows`` users.

    Users are spread over twice the default parallelism so both cores (or all executors) stay
    busy. The result is lazy: the caller keeps ``shared`` alive until it is materialised.
    """
    clock = kernel_clock(users.sparkSession)

    def score_batches(batches):
        value = shared.value
        for batch in batches:
            for start in range(0, len(batch), block_rows):
                started = time.perf_counter()
                scored = score_block(
                    batch.iloc[start : start + block_rows].reset_index(drop=True), value
                )
                clock.add(time.perf_counter() - started)
                yield scored

    partitions = users.sparkSession.sparkContext.defaultParallelism * 2
    return users.repartition(partitions, USER_COL).mapInPandas(score_batches, schema)


def map_with_broadcast(
    users: DataFrame,
    shared_value: Any,
    block_rows: int,
    schema: T.StructType,
    score_block: Callable[[pd.DataFrame, Any], pd.DataFrame],
) -> DataFrame:
    """``score_block(block, shared_value)`` over blocks of ``block_rows`` users, materialised
    (local checkpoint) so that the broadcast can be destroyed before returning: a 10k-item
    weight matrix is 400 MB on every executor."""
    shared = users.sparkSession.sparkContext.broadcast(shared_value)
    try:
        return map_user_blocks(users, shared, block_rows, schema, score_block).localCheckpoint(
            eager=True
        )
    finally:
        shared.destroy()
