"""Item x item sums over pairs of one user's items, in numpy: the co-occurrence, transition and
item-kNN neighbour lists (``hybridrec.models.cooc``) without a Spark row per pair.

A Spark self-join of histories makes a row of every (user, item, other item) and aggregates
them row by row: at 300k users that was most of the als stage (item_neighbours and
item_transitions, ~250 s of 345 s on 2 cores). Here a task gets whole users, one row each with
her items as arrays; it sums its users' pairs into one sparse items x items matrix and returns
its nonzero rows as arrays (``task_sums``). Those rows are gathered by item, summed, divided by
the pair's normaliser and cut to each item's best ``n`` (``best_per_row``).

Items are positions in a sorted id array, so "ties go to the lower neighbour id" is "ties go to
the lower position".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

# Pairs of one chunk of users held at once (three arrays of about this length, plus one user's
# pairs): bounds a task's memory, since one user's pairs grow with the square of her items.
CHUNK_PAIRS = 4_000_000
# Raw (item, item, weight) entries a task keeps before summing duplicates into its matrix.
CONSOLIDATE_ENTRIES = 20_000_000

ALL_PAIRS = "all_pairs"
ORDERED = "ordered"


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _chunks(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive user ranges [start, stop) by where each user's pairs start: a range holds the
    users starting within one ``budget`` of the running total, so it sums to less than
    ``budget`` plus its last user's cost."""
    if not len(cost):
        return []
    before = np.cumsum(cost) - cost
    bucket = before // max(1, budget)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1])
    stops = np.append(starts[1:], len(cost))
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def all_pairs(
    items: np.ndarray, times: np.ndarray | None, lengths: np.ndarray, time_scale: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair (a, b) of a user's items, a == b included, weighted
    ``exp(-|t_a - t_b| / time_scale)`` (1 when ``times`` is None). The a == b entries count
    each item's users, the cosine's norm."""
    lengths = lengths.astype(np.int64)
    group = np.repeat(np.arange(len(lengths)), lengths)
    partners = lengths[group]
    left = np.repeat(np.arange(len(items)), partners)
    first = np.repeat(np.cumsum(partners) - partners, partners)
    right = _starts(lengths)[group][left] + (np.arange(len(left)) - first)
    if times is None:
        weights = np.ones(len(left))
    else:
        weights = np.exp(-np.abs(times[left] - times[right]) / time_scale)
    return items[left], items[right], weights


def ordered_pairs(
    items: np.ndarray, lengths: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b) for b up to ``window`` places after a in a user's ordered items, weighted
    0.5 ** (places - 1)."""
    lengths = lengths.astype(np.int64)
    group = np.repeat(np.arange(len(lengths)), lengths)
    place = np.arange(len(items)) - _starts(lengths)[group]
    left_parts, right_parts, weight_parts = [], [], []
    for gap in range(1, window + 1):
        left = np.flatnonzero(place + gap < lengths[group])
        if not len(left):
            break
        left_parts.append(items[left])
        right_parts.append(items[left + gap])
        weight_parts.append(np.full(len(left), 0.5 ** (gap - 1)))
    if not left_parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    return (
        np.concatenate(left_parts),
        np.concatenate(right_parts),
        np.concatenate(weight_parts),
    )


class _Accumulator:
    """Sums (a, b, weight) entries into one sparse items x items matrix, a batch at a time."""

    def __init__(self, n_items: int):
        self.shape = (n_items, n_items)
        self.total = sp.csr_matrix(self.shape)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending = 0

    def add(self, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        self.parts.append((a, b, w))
        self.pending += len(a)
        if self.pending >= CONSOLIDATE_ENTRIES:
            self._consolidate()

    def add_matrix(self, matrix: sp.spmatrix) -> None:
        self._consolidate()
        self.total = self.total + matrix.tocsr()

    def _consolidate(self) -> None:
        if not self.parts:
            return
        a, b, w = (np.concatenate(p) for p in zip(*self.parts, strict=True))
        self.parts, self.pending = [], 0
        self.total = self.total + sp.csr_matrix((w, (a, b)), shape=self.shape)

    def result(self) -> sp.csr_matrix:
        self._consolidate()
        return self.total


def task_sums(
    batches,
    positions,
    n_items: int,
    kind: str,
    *,
    time_scale: float | None = None,
    window: int = 0,
    part: int = 0,
) -> pa.RecordBatch:
    """One task's pair sums: ``batches`` of users (columns ``items``: list of ids, and for
    time-weighted pairs ``times``: list of seconds) summed into a sparse matrix, returned as a
    record batch with a row per nonzero row: a (position), part, b (positions), w (sums).

    ``positions(ids) -> positions`` maps item ids to catalog positions (None: ``items`` holds
    positions already). ``kind`` is ALL_PAIRS
    (every pair of a user's items; weighted by ``time_scale`` when ``times`` is given) or
    ORDERED (``window`` places on, items in order).
    """
    total = _Accumulator(n_items)
    for batch in batches:
        if not batch.num_rows:
            continue
        column = batch.column("items")
        lengths = np.diff(column.offsets.to_numpy(zero_copy_only=False)).astype(np.int64)
        items = column.flatten().to_numpy(zero_copy_only=False)
        items = (items if positions is None else positions(items)).astype(np.int64)
        times = None
        if "times" in batch.schema.names:
            times = batch.column("times").flatten().to_numpy(zero_copy_only=False)
        if kind == ORDERED:
            total.add(*ordered_pairs(items, lengths, window))
            continue
        starts = _starts(lengths)
        for start, stop in _chunks(lengths**2, CHUNK_PAIRS):
            begin = starts[start]
            end = begin + lengths[start:stop].sum()
            if times is None:
                # Unweighted: XᵀX of the chunk's users, without materialising the pairs.
                rows = np.repeat(np.arange(stop - start), lengths[start:stop])
                x = sp.csr_matrix(
                    (np.ones(end - begin), (rows, items[begin:end])),
                    shape=(stop - start, n_items),
                )
                total.add_matrix(x.T @ x)
            else:
                total.add(
                    *all_pairs(items[begin:end], times[begin:end], lengths[start:stop], time_scale)
                )
    matrix = total.result()
    matrix.sum_duplicates()
    filled = np.flatnonzero(np.diff(matrix.indptr))
    offsets = np.concatenate([matrix.indptr[filled], [matrix.indptr[-1]]]).astype(np.int32)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(filled.astype(np.int32)),
            pa.array(np.full(len(filled), part, np.int32)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.indices.astype(np.int32))),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.data.astype(np.float64))),
        ],
        names=["a", "part", "b", "w"],
    )


def best_per_row(
    a: np.ndarray, b: np.ndarray, similarity: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The entries among the ``n`` highest ``similarity`` of their row ``a`` (ties: lower
    ``b``), as indices into the inputs in row then rank order, and their 1-based ranks."""
    order = np.lexsort((b, -similarity, a))
    rows = a[order]
    new_row = np.concatenate([[True], rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, bool)
    starts = np.flatnonzero(new_row)
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    keep = rank < n
    return order[keep], rank[keep] + 1


UPPER_TRIANGLE_SCHEMA = "i int, j int, count double"


def upper_triangle(a: np.ndarray, b: np.ndarray, summed: np.ndarray) -> pa.RecordBatch:
    """The summed pairs with a <= b (of a symmetric sum, the rest is its mirror)."""
    kept = a <= b
    return pa.RecordBatch.from_arrays(
        [
            pa.array(a[kept].astype(np.int32)),
            pa.array(b[kept].astype(np.int32)),
            pa.array(summed[kept]),
        ],
        names=["i", "j", "count"],
    )


def merged_rows(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (a, b, summed w) of every distinct pair in ``batches`` of ``task_sums`` rows, summed
    in (a, part) order so that the same tasks give the same last bits."""
    a_parts, part_parts, b_parts, w_parts, length_parts = [], [], [], [], []
    for batch in batches:
        if not batch.num_rows:
            continue
        b_column, w_column = batch.column("b"), batch.column("w")
        a_parts.append(batch.column("a").to_numpy(zero_copy_only=False))
        part_parts.append(batch.column("part").to_numpy(zero_copy_only=False))
        length_parts.append(np.diff(b_column.offsets.to_numpy(zero_copy_only=False)))
        b_parts.append(b_column.flatten().to_numpy(zero_copy_only=False))
        w_parts.append(w_column.flatten().to_numpy(zero_copy_only=False))
    if not a_parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    lengths = np.concatenate(length_parts).astype(np.int64)
    row_a = np.concatenate(a_parts).astype(np.int64)
    row_order = np.lexsort((np.concatenate(part_parts), row_a))
    taken = lengths[row_order]
    first = np.repeat(_starts(lengths)[row_order], taken)
    entries = first + (np.arange(taken.sum()) - np.repeat(_starts(taken), taken))
    a = np.repeat(row_a[row_order], taken)
    b = np.concatenate(b_parts).astype(np.int64)[entries]
    w = np.concatenate(w_parts)[entries]
    merged = sp.coo_matrix((w, (a, b)), shape=(int(a.max()) + 1, int(b.max()) + 1)).tocsr()
    merged.sum_duplicates()
    rows = np.repeat(np.arange(merged.shape[0]), np.diff(merged.indptr))
    return rows, merged.indices.astype(np.int64), merged.data
