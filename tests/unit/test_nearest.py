"""Blocked top-n by dot product: the same matches as one brute-force product, at any blocking."""

from __future__ import annotations

import numpy as np
import pytest

from hybridrec.models import nearest


def _frame(spark, key: str, ids: list[str], vectors: np.ndarray):
    return spark.createDataFrame(
        [(i, v.tolist()) for i, v in zip(ids, vectors, strict=True)],
        f"{key} string, vec array<float>",
    )


def _brute_force(left: np.ndarray, right: np.ndarray, n: int, skip_diagonal: bool) -> list[set]:
    scores = left @ right.T
    if skip_diagonal:
        np.fill_diagonal(scores, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:n]) for row in scores]


@pytest.mark.parametrize("right_block_rows", [1000, 7])
def test_top_by_dot_finds_what_one_product_finds(spark, right_block_rows):
    rng = np.random.default_rng(5)
    users, items = rng.standard_normal((40, 6)), rng.standard_normal((45, 6))
    user_ids, item_ids = [f"u{i}" for i in range(40)], [f"i{j}" for j in range(45)]

    rows = nearest.top_by_dot(
        _frame(spark, "user_id", user_ids, users),
        _frame(spark, "item_id", item_ids, items),
        ("user_id", "item_id"),
        ("vec", "vec"),
        "cf",
        5,
        right_block_rows,
    ).collect()

    got: dict[str, set] = {}
    for r in rows:
        got.setdefault(r["user_id"], set()).add(int(r["item_id"][1:]))
    expected = _brute_force(users.astype(np.float32), items.astype(np.float32), 5, False)
    assert got == {f"u{i}": best for i, best in enumerate(expected)}
    scores = {(r["user_id"], r["item_id"]): r["cf"] for r in rows}
    assert scores["u3", f"i{min(expected[3])}"] == pytest.approx(
        float(users[3] @ items[min(expected[3])]), rel=1e-5
    )


def test_top_by_dot_of_a_table_with_itself_never_matches_a_row_to_itself(spark):
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((30, 4))
    ids = [f"i{j}" for j in range(30)]
    frame = _frame(spark, "id", ids, vectors)

    rows = nearest.top_by_dot(
        frame,
        frame.withColumnRenamed("id", "other"),
        ("id", "other"),
        ("vec", "vec"),
        "s",
        4,
        6,
        skip_same_id=True,
    ).collect()

    assert all(r["id"] != r["other"] for r in rows)
    got: dict[str, set] = {}
    for r in rows:
        got.setdefault(r["id"], set()).add(int(r["other"][1:]))
    expected = _brute_force(vectors.astype(np.float32), vectors.astype(np.float32), 4, True)
    assert got == {f"i{j}": best for j, best in enumerate(expected)}


def test_block_best_leaves_out_the_own_row_only_where_it_is_in_the_block():
    right_ids = np.array(["a", "b"], dtype=object)
    right = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    left_ids = np.array(["a", "z"], dtype=object)
    left = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)

    lefts, rights, scores = nearest.block_best(left_ids, left, right_ids, right, 2, True)

    # a: only b (itself left out); z (not in this block): a then b.
    assert list(zip(lefts, rights, strict=True)) == [("a", "b"), ("z", "a"), ("z", "b")]
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.0])
