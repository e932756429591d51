"""udfs.pair_kernel: item pair sums per task, checked against brute force in plain Python."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from udfs import pair_kernel
from udfs.pair_kernel import (
    ALL_PAIRS,
    ORDERED,
    best_per_row,
    merged_rows,
    task_sums,
    upper_triangle,
)

N_ITEMS = 12


def _users(rng, n_users=40, longest=9):
    users = []
    for _ in range(n_users):
        h = int(rng.integers(1, longest + 1))
        items = rng.choice(N_ITEMS, size=h, replace=False)
        times = rng.integers(0, 90, size=h).astype(float) * 86_400
        users.append((items, times))
    return users


def _batch(users, with_times=True) -> pa.RecordBatch:
    columns = [pa.array([[f"i{i:02d}" for i in items] for items, _ in users])]
    names = ["items"]
    if with_times:
        columns.append(pa.array([times.tolist() for _, times in users], pa.list_(pa.float64())))
        names.append("times")
    return pa.RecordBatch.from_arrays(columns, names=names)


def _positions(ids: np.ndarray) -> np.ndarray:
    return np.array([int(i[1:]) for i in ids])


def _dense(batch: pa.RecordBatch) -> np.ndarray:
    a, b, w = merged_rows([batch])
    out = np.zeros((N_ITEMS, N_ITEMS))
    out[a, b] = w
    return out


def _brute_all_pairs(users, scale):
    out = np.zeros((N_ITEMS, N_ITEMS))
    for items, times in users:
        for x, tx in zip(items, times, strict=True):
            for y, ty in zip(items, times, strict=True):
                out[x, y] += 1.0 if scale is None else math.exp(-abs(tx - ty) / scale)
    return out


@pytest.mark.parametrize("scale", [None, 30 * 86_400.0])
def test_all_pairs_sum_every_pair_of_each_users_items(scale):
    users = _users(np.random.default_rng(0))
    batches = [_batch(users[:25], scale is not None), _batch(users[25:], scale is not None)]

    got = _dense(task_sums(batches, _positions, N_ITEMS, ALL_PAIRS, time_scale=scale))

    np.testing.assert_allclose(got, _brute_all_pairs(users, scale), rtol=1e-12)
    # The diagonal counts each item's users: the cosine's norm.
    users_of = np.zeros(N_ITEMS)
    for items, _ in users:
        users_of[items] += 1
    np.testing.assert_allclose(np.diag(got), users_of)


@pytest.mark.parametrize("scale", [None, 30 * 86_400.0])
def test_chunking_and_consolidating_change_nothing(monkeypatch, scale):
    users = _users(np.random.default_rng(1), n_users=60, longest=12)
    batch = [_batch(users, scale is not None)]
    whole = _dense(task_sums(batch, _positions, N_ITEMS, ALL_PAIRS, time_scale=scale))

    # A chunk smaller than one user's pairs, and a matrix summed after every chunk.
    monkeypatch.setattr(pair_kernel, "CHUNK_PAIRS", 50)
    monkeypatch.setattr(pair_kernel, "CONSOLIDATE_ENTRIES", 10)
    chunked = _dense(task_sums(batch, _positions, N_ITEMS, ALL_PAIRS, time_scale=scale))

    np.testing.assert_allclose(chunked, whole, rtol=1e-12)


def test_ordered_pairs_weigh_later_places_by_halves_within_the_window():
    users = _users(np.random.default_rng(2))
    window = 3
    expected = np.zeros((N_ITEMS, N_ITEMS))
    for items, _ in users:
        for p, x in enumerate(items):
            for gap in range(1, window + 1):
                if p + gap < len(items):
                    expected[x, items[p + gap]] += 0.5 ** (gap - 1)

    got = _dense(task_sums([_batch(users, False)], _positions, N_ITEMS, ORDERED, window=window))

    np.testing.assert_allclose(got, expected)


def test_merged_rows_sum_tasks_in_the_same_order_however_they_arrive():
    users = _users(np.random.default_rng(3), n_users=90)
    scale = 7 * 86_400.0
    tasks = [
        task_sums([_batch(users[k::3])], _positions, N_ITEMS, ALL_PAIRS, time_scale=scale, part=k)
        for k in range(3)
    ]

    forward = merged_rows(tasks)
    backward = merged_rows(tasks[::-1])
    split = merged_rows([t.slice(0, 4) for t in tasks] + [t.slice(4) for t in tasks[::-1]])

    for got in (backward, split):
        for x, y in zip(forward, got, strict=True):
            assert np.array_equal(x, y)  # bit for bit, not approximately
    dense = np.zeros((N_ITEMS, N_ITEMS))
    dense[forward[0], forward[1]] = forward[2]
    np.testing.assert_allclose(dense, _brute_all_pairs(users, scale), rtol=1e-12)


def test_best_per_row_keeps_the_n_highest_ties_to_the_lower_column():
    a = np.array([0, 0, 0, 0, 1, 1, 2])
    b = np.array([5, 3, 4, 1, 2, 0, 9])
    sim = np.array([0.5, 0.9, 0.5, 0.1, 0.3, 0.3, 0.7])

    chosen, rank = best_per_row(a, b, sim, 2)

    assert list(zip(a[chosen], b[chosen], rank, strict=True)) == [
        (0, 3, 1),
        (0, 4, 2),  # ties 5 at 0.5: the lower column wins
        (1, 0, 1),
        (1, 2, 2),
        (2, 9, 1),
    ]


def test_empty_input_gives_empty_rows():
    batch = task_sums([], _positions, N_ITEMS, ALL_PAIRS)
    assert batch.num_rows == 0
    a, b, w = merged_rows([batch])
    assert len(a) == len(b) == len(w) == 0
    assert upper_triangle(a, b, w).num_rows == 0


def test_upper_triangle_keeps_each_symmetric_pair_once():
    users = _users(np.random.default_rng(4))
    a, b, w = merged_rows([task_sums([_batch(users, False)], _positions, N_ITEMS, ALL_PAIRS)])

    kept = upper_triangle(a, b, w).to_pydict()

    pairs = defaultdict(float)
    for i, j, c in zip(kept["i"], kept["j"], kept["count"], strict=True):
        assert i <= j
        pairs[i, j] += c
    full = _brute_all_pairs(users, None)
    assert pairs == {
        (i, j): full[i, j] for i in range(N_ITEMS) for j in range(i, N_ITEMS) if full[i, j]
    }


def test_chunks_cover_every_user_in_order_within_the_budget_plus_one_user():
    cost = np.random.default_rng(5).integers(1, 40, size=200) ** 2
    cost[50] = 5_000  # one user above the budget on her own

    spans = pair_kernel._chunks(cost, 1_000)

    assert spans[0][0] == 0 and spans[-1][1] == len(cost)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for start, stop in spans:
        assert stop > start
        assert cost[start:stop].sum() < 1_000 + cost[stop - 1]
    assert pair_kernel._chunks(cost[:0], 1_000) == []
