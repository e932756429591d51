"""Item-to-item co-occurrence: the items that the same users had, close together in time.

The second collaborative signal beside ALS. ALS compresses every user into a few factors;
co-occurrence keeps the exact "people who had this also had that" pairs, which carries more on
small catalogs and short histories (measured in the README's quality table).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.constants import FOLD_COL, ITEM_COL, TS_COL, USER_COL
from hybridrec.models.folds import history
from udfs.pair_kernel import ALL_PAIRS, ORDERED, best_per_row, merged_rows, task_sums

NEIGHBOUR_COL = "neighbour_id"
SECONDS_PER_DAY = 86_400.0
RANK_COL = "rank"
_SUMS_SCHEMA = "a int, part int, b array<int>, w array<double>"


def cosine_neighbours(events: DataFrame, n: int, time_scale_days: float | None = None) -> DataFrame:
    """item_id, neighbour_id, similarity, rank: each item's ``n`` most similar other items.

    ``events`` holds distinct (user_id, item_id) pairs, and ``_t`` (seconds) where the pairs are
    time-weighted. Each user of both items adds 1 to the pair, or
    ``exp(-days apart / time_scale_days)`` when ``time_scale_days`` is given; the sum is divided
    by ``sqrt(users of a * users of b)`` (cosine), so popular items do not neighbour everything.
    Ties go to the lower neighbour_id; items with no user in common are not listed. The pairs
    are summed in numpy per task (``udfs.pair_kernel``), never a Spark row per pair.
    """
    fields = [ITEM_COL] + (["_t"] if time_scale_days is not None else [])
    arrays = [F.col(f"_s.{ITEM_COL}").alias("items")]
    if time_scale_days is not None:
        arrays.append(F.col("_s._t").cast("array<double>").alias("times"))
    user_rows = (
        events.groupBy(USER_COL).agg(F.collect_list(F.struct(*fields)).alias("_s")).select(*arrays)
    )
    norms = _collect_norms(events.groupBy(ITEM_COL).agg(F.count(F.lit(1)).alias("users")))
    users = norms["users"].to_numpy(np.float64)
    return _neighbour_lists(
        user_rows,
        norms[ITEM_COL].to_numpy(object),
        lambda a, b: np.sqrt(users[a] * users[b]),
        n,
        ALL_PAIRS,
        time_scale=None if time_scale_days is None else time_scale_days * SECONDS_PER_DAY,
    )


def _collect_norms(per_item: DataFrame) -> pd.DataFrame:
    """Per item normalisers in item id order: item-sized, held by every task of the lists."""
    return per_item.orderBy(ITEM_COL).toPandas()


def pair_sums(
    user_rows: DataFrame,
    n_items: int,
    finish: Callable[[np.ndarray, np.ndarray, np.ndarray], pa.RecordBatch],
    schema: str,
    kind: str = ALL_PAIRS,
    positions: Callable[[np.ndarray], np.ndarray] | None = None,
    **pairing,
) -> DataFrame:
    """Sums over the pairs of each user's items (``udfs.pair_kernel``): ``user_rows`` holds one
    row per user, ``items`` (ids mapped by ``positions``, or catalog positions where it is None)
    and, for time-weighted pairs, ``times``. Each task sums its users' pairs; the sums are then
    gathered by item and handed to ``finish(a, b, summed)`` (every distinct pair of the
    partition's items a), whose record batch of ``schema`` is the output."""

    def sums(batches):
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        yield task_sums(batches, positions, n_items, kind, part=part, **pairing)

    def merge(batches):
        yield finish(*merged_rows(batches))

    return user_rows.mapInArrow(sums, _SUMS_SCHEMA).repartition("a").mapInArrow(merge, schema)


def _best(
    denominator: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
    label: Callable[[np.ndarray], pa.Array],
    names: list[str],
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], pa.RecordBatch]:
    """The ``finish`` of ``pair_sums`` for neighbour lists: each item's pairs with other items
    divided by ``denominator(a, b)`` of catalog positions, cut to its best ``n``, the items
    written by ``label``."""

    def best(a: np.ndarray, b: np.ndarray, summed: np.ndarray) -> pa.RecordBatch:
        other = a != b
        a, b, summed = a[other], b[other], summed[other]
        similarity = summed / denominator(a, b)
        chosen, rank = best_per_row(a, b, similarity, n)
        return pa.RecordBatch.from_arrays(
            [
                label(a[chosen]),
                label(b[chosen]),
                pa.array(similarity[chosen], pa.float64()),
                pa.array(rank.astype(np.int32), pa.int32()),
            ],
            names=names,
        )

    return best


def _neighbour_lists(
    user_rows: DataFrame,
    ids: np.ndarray,
    denominator: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
    kind: str,
    **pairing,
) -> DataFrame:
    """``pair_sums`` of ``user_rows`` divided by ``denominator(a, b)`` of catalog positions and
    cut to each item's best ``n``, as item ids."""
    names = [ITEM_COL, NEIGHBOUR_COL, "similarity", RANK_COL]
    return pair_sums(
        user_rows,
        len(ids),
        _best(denominator, n, lambda p: pa.array(ids[p], pa.string()), names),
        f"{ITEM_COL} string, {NEIGHBOUR_COL} string, similarity double, {RANK_COL} int",
        kind,
        pd.Index(ids).get_indexer,
        **pairing,
    )


def cosine_positions(user_rows: DataFrame, n_items: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``cosine_neighbours`` (unweighted) over catalog positions, collected (item-sized):
    ``user_rows`` holds one row per user, ``items`` her distinct catalog positions. Returns
    (n_items, width) arrays of each item's neighbours best first (-1 pads) and their
    similarities, width the longest list."""
    # Read twice (the norms, then the sums): computed once.
    user_rows = user_rows.persist()
    try:
        counted = user_rows.select(F.explode("items").alias("a")).groupBy("a").count().toArrow()
        users = np.zeros(n_items)
        users[counted.column("a").to_numpy()] = counted.column("count").to_numpy()
        names = ["a", "b", "similarity", RANK_COL]
        best = _best(
            lambda a, b: np.sqrt(users[a] * users[b]),
            n,
            lambda p: pa.array(p.astype(np.int32), pa.int32()),
            names,
        )
        table = pair_sums(
            user_rows, n_items, best, f"a int, b int, similarity double, {RANK_COL} int"
        ).toArrow()
    finally:
        user_rows.unpersist()
    a, b, similarity, rank = (table.column(c).to_numpy() for c in names)
    width = max(1, int(rank.max()) if len(rank) else 1)
    lists = np.full((n_items, width), -1, np.int64)
    sims = np.zeros((n_items, width), np.float64)
    lists[a, rank - 1] = b
    sims[a, rank - 1] = similarity
    return lists, sims


def item_neighbours(
    interactions: DataFrame,
    fold: str,
    *,
    history_items: int,
    time_scale_days: float,
    neighbours: int,
) -> DataFrame:
    """Per item, its ``neighbours`` most similar items by time-weighted co-occurrence.

    Two items of one user's newest ``history_items`` count ``exp(-days apart / time_scale_days)``
    towards their pair, so items had together weigh more than items had years apart
    (``cosine_neighbours``). The cap bounds a user's pairs at ``history_items``².

    Returns item_id, neighbour_id, similarity, fold.
    """
    pairs = (
        history(interactions, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.max(F.unix_timestamp(TS_COL)).alias("_t"))
        .withColumn(
            "_r",
            F.row_number().over(
                Window.partitionBy(USER_COL).orderBy(F.col("_t").desc(), F.col(ITEM_COL))
            ),
        )
        .where(F.col("_r") <= history_items)
        .drop("_r")
    )
    return (
        cosine_neighbours(pairs, neighbours, float(time_scale_days))
        .drop(RANK_COL)
        .withColumn(FOLD_COL, F.lit(fold))
    )


def item_transitions(
    interactions: DataFrame, fold: str, *, window: int, neighbours: int
) -> DataFrame:
    """Per item, the ``neighbours`` items most often had next after it: "what came next".

    Each user's distinct items, in the order first had (ties: item id), give directed pairs
    (a, b) for b up to ``window`` places after a, weighted 0.5 ** (places - 1). The summed weight
    is divided by sqrt(max(1, a's outgoing weight) * max(1, b's incoming weight)), so an item
    that follows everything does not lead every list, while a pair seen once between rare items
    does not outrank one many users made. Unlike co-occurrence the pairs are ordered: a season
    is followed by the next one, not the one before. The pairs are summed in numpy per task
    (``udfs.pair_kernel``).

    Returns item_id, neighbour_id, similarity, fold.
    """
    in_order = F.array_sort(F.collect_list(F.struct("_first", ITEM_COL)))
    user_rows = (
        history(interactions, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.min(TS_COL).alias("_first"))
        .groupBy(USER_COL)
        .agg(in_order.alias("_s"))
    )
    # A's outgoing weight sums 0.5 ** (gap - 1) over the places after it, up to the window:
    # 2 * (1 - 0.5 ** places); its incoming weight likewise over the places before it.
    placed = user_rows.select(F.size("_s").alias("_h"), F.posexplode("_s").alias("_p", "_e"))
    after = F.least(F.col("_h") - 1 - F.col("_p"), F.lit(int(window)))
    before = F.least(F.col("_p"), F.lit(int(window)))
    norms = _collect_norms(
        placed.groupBy(F.col(f"_e.{ITEM_COL}").alias(ITEM_COL)).agg(
            F.sum(2 * (1 - F.pow(F.lit(0.5), after))).alias("out"),
            F.sum(2 * (1 - F.pow(F.lit(0.5), before))).alias("in"),
        )
    )
    outgoing = np.maximum(norms["out"].to_numpy(np.float64), 1.0)
    incoming = np.maximum(norms["in"].to_numpy(np.float64), 1.0)
    lists = _neighbour_lists(
        user_rows.select(F.col(f"_s.{ITEM_COL}").alias("items")),
        norms[ITEM_COL].to_numpy(object),
        lambda a, b: np.sqrt(outgoing[a] * incoming[b]),
        neighbours,
        ORDERED,
        window=int(window),
    )
    return lists.drop(RANK_COL).withColumn(FOLD_COL, F.lit(fold))
