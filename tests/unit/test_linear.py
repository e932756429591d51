"""hybridrec.evaluation.linear: EASE^R and item-kNN against numpy brute force on a real local
session."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hybridrec.config.loader import load_config
from hybridrec.constants import TEST, TRAIN, VALIDATION
from hybridrec.evaluation.item_knn import (
    SCORE_DECIMALS,
    cosine_neighbours,
    interacted,
    knn_target_ranks,
    neighbours_from_gram,
    recommend_knn,
)
from hybridrec.evaluation.linear import ease_passes, ease_weights, gram, tune_and_recommend
from hybridrec.evaluation.matrix import (
    dense_tuning_ranks,
    item_index,
    item_lists,
    recommend_dense,
    tuning_seen_lists,
)
from hybridrec.models import cooc
from hybridrec.models.folds import history
from hybridrec.ranking.candidates import MISS_RANK

SCHEMA = "user_id string, item_id string, split string"


def _ids(n: int) -> list[str]:
    return [f"i{j:02d}" for j in range(n)]


def _user(u: int) -> str:
    return f"u{u:02d}"


def _matrix_rows(x: np.ndarray, split: str = TRAIN) -> list[tuple[str, str, str]]:
    users, items = np.nonzero(x)
    return [(_user(u), f"i{i:02d}", split) for u, i in zip(users, items, strict=True)]


def _catalog(spark, n: int):
    return spark.createDataFrame([(i,) for i in _ids(n)], "item_id string")


def _binary(rng: np.random.Generator, users: int, items: int, p: float) -> np.ndarray:
    return (rng.random((users, items)) < p).astype(np.float64)


def _by_user(df) -> dict[str, list[str]]:
    """Each user's recommended item ids in rank order, checking ranks run 1, 2, ..."""
    lists: dict[str, list[tuple[int, str]]] = {}
    for row in df.collect():
        lists.setdefault(row["user_id"], []).append((row["rank"], row["item_id"]))
    for pairs in lists.values():
        assert sorted(r for r, _ in pairs) == list(range(1, len(pairs) + 1))
    return {u: [i for _, i in sorted(pairs)] for u, pairs in lists.items()}


def _numpy_top_k(scores: np.ndarray, seen: np.ndarray, k: int, voted_only: bool = False):
    """Per user row: best k unseen item ids, ties to the lower index."""
    out = {}
    for u in range(len(scores)):
        candidates = [j for j in range(scores.shape[1]) if not seen[u, j]]
        if voted_only:
            candidates = [j for j in candidates if scores[u, j] > 0]
        ranked = sorted(candidates, key=lambda j, u=u: (-scores[u, j], j))[:k]
        if seen[u].any():
            out[_user(u)] = [f"i{j:02d}" for j in ranked]
    return out


def _numpy_rank(scores: np.ndarray, seen: np.ndarray, u: int, t: int, voted_only: bool) -> int:
    if seen[u, t] or (voted_only and scores[u, t] <= 0):
        return MISS_RANK
    ahead = [j for j in range(scores.shape[1]) if j != t and not seen[u, j]]
    return 1 + sum(scores[u, j] >= scores[u, t] for j in ahead)


def _ridge_ease(x: np.ndarray, l2: float) -> np.ndarray:
    """EASE column by column: the ridge regression of each item on all the others."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        b[others, j] = np.linalg.solve(xo.T @ xo + l2 * np.eye(n - 1), xo.T @ x[:, j])
    return b


def _cosine(x: np.ndarray) -> np.ndarray:
    """Cosine of item columns, 0 on the diagonal and where no user is in common."""
    g = x.T @ x
    d = np.diag(g)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(g > 0, g / np.sqrt(np.outer(d, d)), 0.0)
    np.fill_diagonal(sim, 0.0)
    return sim


def _top_neighbours(sim: np.ndarray, n: int) -> np.ndarray:
    """sim with only each row's best n (ties to the lower index) kept."""
    kept = np.zeros_like(sim)
    for i in range(len(sim)):
        listed = sorted(np.nonzero(sim[i] > 0)[0], key=lambda j, i=i: (-sim[i, j], j))[:n]
        kept[i, listed] = sim[i, listed]
    return kept


def _knn_scores(x: np.ndarray, n: int) -> np.ndarray:
    return np.round(x @ _top_neighbours(_cosine(x), n), SCORE_DECIMALS)


def test_gram_counts_users_of_each_pair_of_catalog_items(spark):
    rng = np.random.default_rng(0)
    x = _binary(rng, 12, 7, 0.4)
    x[1, 3] = 0.0
    rows = _matrix_rows(x)
    rows += [rows[0], ("u00", "zz", TRAIN), ("u01", "i03", VALIDATION)]
    interactions = spark.createDataFrame(rows, SCHEMA)
    ids, index = item_index(_catalog(spark, 7))

    g = gram(history(interactions, VALIDATION), index, len(ids))

    # The duplicate counts once, the non-catalog item and the held-out validation row not at all.
    assert list(ids) == _ids(7)
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, x.T @ x)


def test_ease_weights_are_ridge_regressions_on_the_other_items():
    rng = np.random.default_rng(1)
    x = _binary(rng, 40, 6, 0.4)

    b = ease_weights(x.T @ x, 3.0)

    assert b.dtype == np.float32
    np.testing.assert_array_equal(np.diag(b), 0.0)
    np.testing.assert_allclose(b, _ridge_ease(x, 3.0), atol=1e-4)
    assert np.abs(b).max() > 0.05  # not trivially zero


def _dense_case(spark):
    seen = {"u01": [0, 2], "u02": [5], "u03": [0, 1, 2, 3, 4]}
    rows = [(u, f"i{j:02d}", TRAIN) for u, items in seen.items() for j in items]
    rows.append(("u05", "zz", TRAIN))  # history only outside the catalog
    x = np.zeros((4, 6))
    for u, items in seen.items():
        x[int(u[1:]), items] = 1.0
    weights = np.random.default_rng(2).normal(size=(6, 6)).astype(np.float32)
    return spark.createDataFrame(rows, SCHEMA), x, weights, np.array(_ids(6), dtype=object)


def test_recommend_dense_ranks_unseen_items_by_history_times_weights(spark):
    interactions, x, weights, ids = _dense_case(spark)
    users = spark.createDataFrame(
        [(u,) for u in ("u01", "u02", "u03", "u04", "u05")], "user_id string"
    )

    recs = recommend_dense(interactions, users, ids, weights, 3, "ease", block_rows=2)
    only_u01 = recommend_dense(interactions, users.where("user_id = 'u01'"), ids, weights, 3, "m")

    expected = _numpy_top_k(x.astype(np.float32) @ weights, x > 0, 3)
    assert _by_user(recs) == expected
    assert len(expected["u01"]) == 3 and len(expected["u03"]) == 1  # u03 has one unseen item
    assert {r["model"] for r in recs.collect()} == {"ease"}
    assert list(recs.columns) == ["model", "user_id", "rank", "item_id"]
    assert _by_user(only_u01) == {"u01": expected["u01"]}


def test_dense_tuning_ranks_count_ties_against_the_target_and_miss_seen_targets(spark):
    interactions, x, weights, ids = _dense_case(spark)
    targets = spark.createDataFrame(
        [("u01", "i04"), ("u02", "i01"), ("u03", "i00"), ("u04", "i01"), ("u05", "i02")],
        "user_id string, target string",
    )
    # Tie i03 with u02's target: ties count against it.
    weights[5, 3] = weights[5, 1]
    # A second matrix in the same pass ranks by its own scores: the order reversed.
    reversed_weights = -weights

    ranks = dense_tuning_ranks(
        tuning_seen_lists(interactions, targets, ids), [reversed_weights, weights], first_combo=3
    )

    got = {(r["combo"], r["user_id"]): r["target_rank"] for r in ranks.collect()}
    expected = {}
    for combo, matrix in ((3, reversed_weights), (4, weights)):
        scores = x.astype(np.float32) @ matrix
        expected |= {
            (combo, "u01"): _numpy_rank(scores, x > 0, 1, 4, voted_only=False),
            (combo, "u02"): _numpy_rank(scores, x > 0, 2, 1, voted_only=False),
            (combo, "u03"): MISS_RANK,  # already had its target
        }
    assert got == expected
    assert got[(3, "u01")] != got[(4, "u01")]
    # u02 (had i05) ranks i01 behind i00 and i02 (higher) and i03 (tied), ahead of i04.
    scores = x.astype(np.float32) @ weights
    assert scores[2, 3] == scores[2, 1]
    assert got[(4, "u02")] == 1 + sum(scores[2, j] >= scores[2, 1] for j in (0, 2, 3, 4))


def test_ease_passes_hold_as_many_matrices_as_the_budget_allows():
    # 1,000 items: 4 MB per float32 matrix (3.81 MiB).
    assert ease_passes([1, 2, 3, 4, 5], 1000, 512) == [[0, 1, 2, 3, 4]]
    assert ease_passes([1, 2, 3, 4, 5], 1000, 8) == [[0, 1], [2, 3], [4]]
    assert ease_passes([1, 2, 3], 1000, 1) == [[0], [1], [2]]  # one at least, over budget


def test_cosine_positions_are_the_brute_force_top_n_as_arrays(spark):
    rng = np.random.default_rng(5)
    x = _binary(rng, 25, 12, 0.3)
    x[:, 11] = 0  # an item nobody had: an empty list, nobody's neighbour
    interactions = spark.createDataFrame(_matrix_rows(x) + [("u00", "zz", TRAIN)], SCHEMA)
    sim = _cosine(x)
    _, index = item_index(_catalog(spark, 12))

    lists, sims = cooc.cosine_positions(item_lists(history(interactions, VALIDATION), index), 12, 4)

    assert lists.shape == sims.shape == (12, 4)
    for i in range(12):
        expected = sorted(np.nonzero(sim[i] > 0)[0], key=lambda j, i=i: (-sim[i, j], j))
        expected = [j for j in expected if j != i][:4]
        assert lists[i].tolist() == expected + [-1] * (4 - len(expected))
        assert sims[i, : len(expected)] == pytest.approx(list(sim[i, expected]))
    assert lists[11].tolist() == [-1] * 4
    assert not (lists == 11).any()


def test_cosine_neighbours_are_the_brute_force_top_n(spark):
    rng = np.random.default_rng(3)
    x = _binary(rng, 20, 10, 0.3)
    interactions = spark.createDataFrame(_matrix_rows(x) + [("u00", "zz", TRAIN)], SCHEMA)
    sim = _cosine(x)

    neighbours = cosine_neighbours(history(interactions, VALIDATION), _catalog(spark, 10), 3)

    got: dict[str, list[tuple[int, str, float]]] = {}
    for r in neighbours.collect():
        got.setdefault(r["item_id"], []).append((r["rank"], r["neighbour_id"], r["similarity"]))
    for i in range(10):
        listed = sorted(got.get(f"i{i:02d}", []))
        expected = sorted(np.nonzero(sim[i] > 0)[0], key=lambda j, i=i: (-sim[i, j], j))[:3]
        assert [n for _, n, _ in listed] == [f"i{j:02d}" for j in expected]
        assert [s for _, _, s in listed] == pytest.approx(list(sim[i, expected]))
        assert [r for r, _, _ in listed] == list(range(1, len(expected) + 1))


def test_knn_recommendations_and_target_ranks_match_brute_force(spark):
    rng = np.random.default_rng(4)
    x = _binary(rng, 20, 10, 0.3)
    interactions = spark.createDataFrame(_matrix_rows(x), SCHEMA)
    catalog = _catalog(spark, 10)
    fit = history(interactions, VALIDATION)
    seen = interacted(fit, catalog)
    neighbours = cosine_neighbours(fit, catalog, 6)
    target_idx = rng.integers(0, 10, size=20)
    targets = spark.createDataFrame(
        [(_user(u), f"i{t:02d}") for u, t in enumerate(target_idx)], "user_id string, target string"
    )
    scores = _knn_scores(x, 3)

    recs = recommend_knn(seen, neighbours, 3, 4, "item_knn")
    ranks = {
        r["user_id"]: r["target_rank"]
        for r in knn_target_ranks(seen, targets, neighbours, 3).collect()
    }

    assert _by_user(recs) == {
        u: items for u, items in _numpy_top_k(scores, x > 0, 4, voted_only=True).items() if items
    }
    assert ranks == {
        _user(u): _numpy_rank(scores, x > 0, u, t, voted_only=True)
        for u, t in enumerate(target_idx)
        if x[u].any()
    }
    assert any(r < MISS_RANK for r in ranks.values()) and MISS_RANK in ranks.values()


# --- tuning and refit ------------------------------------------------------------------------

N_ITEMS = 12


def _split_case(spark, seed: int = 5):
    """Users with train items, one validation and one test item each; a non-catalog item and a
    validation repeat of a train item (a seen target) for good measure."""
    rng = np.random.default_rng(seed)
    train, validation, test = (np.zeros((40, N_ITEMS)) for _ in range(3))
    rows = []
    for u in range(40):
        items = rng.permutation(N_ITEMS)[: rng.integers(4, 9)]
        train[u, items[:-2]], validation[u, items[-2]], test[u, items[-1]] = 1, 1, 1
    rows = _matrix_rows(train) + _matrix_rows(validation, VALIDATION) + _matrix_rows(test, TEST)
    rows += [("u00", "zz", TRAIN), ("u01", "zz", VALIDATION)]
    repeat = int(np.nonzero(train[2])[0].min())
    validation[2, repeat] = 1
    rows.append((_user(2), f"i{repeat:02d}", VALIDATION))
    return spark.createDataFrame(rows, SCHEMA), train, validation


def _cfg(tmp_path, *overrides: str):
    return load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "evaluate.k=3",
            "score.tune_max_users=100000",
            *overrides,
        ],
    )


def _validation_metrics(
    scores: np.ndarray, seen: np.ndarray, targets: np.ndarray, voted_only: bool
) -> tuple[float, float]:
    """NDCG@3 and HR@3 of every user's target."""
    ranks = np.array([_numpy_rank(scores, seen, u, t, voted_only) for u, t in enumerate(targets)])
    return float(np.where(ranks <= 3, 1 / np.log2(ranks + 1), 0.0).mean()), float(
        (ranks <= 3).mean()
    )


# item-kNN's neighbour lists from the Gram matrix EASE counts (catalogs up to
# evaluate.ease.max_items), from a self-join with the votes summed in numpy, or all in Spark:
# the same picks, scores and lists.
# EASE's l2 values are judged in one pass over the users, or one pass each where the budget
# holds one matrix: the same picks.
@pytest.mark.parametrize("path", ["gram", "gram-pass-per-value", "in-memory", "spark"])
def test_tuning_picks_the_best_validation_ndcg_and_refits_on_test(spark, tmp_path, path):
    interactions, train, validation = _split_case(spark)
    # On this case the second value of each grid wins, so taking the first would fail.
    l2_grid, knn_grid = [0.5, 5.0], [1, 3]
    with_ease = path.startswith("gram")
    budget_mb = "0.000001" if path == "gram-pass-per-value" else "512.0"
    cfg = _cfg(
        tmp_path,
        f"evaluate.ease.max_items={100 if with_ease else 0}",
        f"evaluate.ease.tuning_broadcast_mb={budget_mb}",
        f"evaluate.ease.l2_grid={l2_grid}",
        f"evaluate.item_knn.neighbours_grid={knn_grid}",
    )

    recs, params = tune_and_recommend(
        interactions, _catalog(spark, N_ITEMS), cfg, in_memory=path != "spark"
    )

    targets = validation.argmax(axis=1)  # the lowest validation id per user
    seen = train > 0
    ease = [
        _validation_metrics(
            train.astype(np.float32) @ ease_weights(train.T @ train, l2), seen, targets, False
        )
        for l2 in l2_grid
    ]
    knn = [_validation_metrics(_knn_scores(train, n), seen, targets, True) for n in knn_grid]
    assert ease[1][0] > ease[0][0] and knn[1][0] > knn[0][0]
    best_l2, best_n = l2_grid[1], knn_grid[1]
    expected = {
        "item_knn.neighbours": best_n,
        "item_knn.validation_ndcg": knn[1][0],
        "item_knn.validation_hr": knn[1][1],
    }
    if with_ease:
        expected |= {
            "ease.l2": best_l2,
            "ease.validation_ndcg": ease[1][0],
            "ease.validation_hr": ease[1][1],
        }
    assert params == pytest.approx(expected)

    test_fit = np.maximum(train, validation)
    by_model = {m: recs.where(recs.model == m) for m in ("ease", "item_knn")}
    assert _by_user(by_model["item_knn"]) == _numpy_top_k(
        _knn_scores(test_fit, best_n), test_fit > 0, 3, voted_only=True
    )
    models = {r["model"] for r in recs.select("model").distinct().collect()}
    if with_ease:
        ease_scores = test_fit.astype(np.float32) @ ease_weights(test_fit.T @ test_fit, best_l2)
        assert _by_user(by_model["ease"]) == _numpy_top_k(ease_scores, test_fit > 0, 3)
        assert models == {"ease", "item_knn"}
    else:
        assert models == {"item_knn"}


def test_neighbour_lists_from_the_gram_matrix_are_the_brute_force_top_n():
    rng = np.random.default_rng(3)
    x = _binary(rng, 30, 14, 0.3)
    x[:, 13] = 0  # an item nobody had: no neighbours, nobody's neighbour
    sim = _cosine(x)

    lists, sims = neighbours_from_gram(x.T @ x, 4, block_rows=5)

    assert lists.shape == (14, 4)
    for i in range(14):
        expected = sorted(
            (j for j in np.nonzero(sim[i] > 0)[0] if j != i), key=lambda j, i=i: (-sim[i, j], j)
        )[:4]
        got = [j for j in lists[i] if j >= 0]
        assert got == expected, i
        assert list(sims[i, : len(got)]) == pytest.approx(list(sim[i, expected]))
        assert (sims[i, len(got) :] == 0).all()
    assert (lists[13] == -1).all() and not (lists == 13).any()


def test_ease_is_skipped_above_max_items(spark, tmp_path, caplog):
    interactions, _, _ = _split_case(spark)
    cfg = _cfg(
        tmp_path,
        f"evaluate.ease.max_items={N_ITEMS - 1}",
        "evaluate.item_knn.neighbours_grid=[2]",
    )

    with caplog.at_level(logging.INFO, logger="hybridrec.evaluation.linear"):
        recs, params = tune_and_recommend(interactions, _catalog(spark, N_ITEMS), cfg)

    assert {r["model"] for r in recs.select("model").distinct().collect()} == {"item_knn"}
    # a grid of one value has nothing to pick: no validation scores
    assert params == {"item_knn.neighbours": 2}
    assert "item_knn: neighbours=2, the grid's only value (not scored on validation)" in caplog.text
    assert (
        f"EASE skipped: {N_ITEMS} catalog items above evaluate.ease.max_items={N_ITEMS - 1}"
        in caplog.text
    )
