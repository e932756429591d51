"""The numpy scoring kernel (udfs.ranking_kernel, rerank, reasons, full_ranking), checked
against hand-computed numbers (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udfs.full_ranking import recommend_block
from udfs.ranking_kernel import (
    PARTS,
    ItemCatalog,
    closest_items,
    history_votes,
    normalise,
    padded_history,
    ragged_mask,
    recent_similarity,
    signed_power,
    stack_vectors,
    target_ranks,
    top_k,
    weight_grid,
    with_next,
)
from udfs.reasons import dominant_parts
from udfs.rerank import TIE_BREAK, rerank_top_k, reranked_target_ranks, tie_break

HYBRID = {"cf": 0.6, "text": 0.3, "pop": 0.1}

# --- normalise -------------------------------------------------------------------------------


def test_zscore_scales_valid_entries_and_fills_invalid_with_row_mean():
    scores = np.array([[1.0, 2.0, 3.0, 100.0]])
    valid = np.array([[True, True, True, False]])

    out = normalise(scores, valid, "zscore")

    # mean 2, population std sqrt(2/3) = 0.8164966; the invalid 100 is ignored and gets 0.
    np.testing.assert_allclose(out, [[-1.2247449, 0.0, 1.2247449, 0.0]], rtol=1e-6)


def test_minmax_scales_to_unit_interval_and_fills_with_row_mean():
    scores = np.array([[3.0, 1.0, 2.0, 5.0, 4.0]])
    valid = np.array([[True, True, False, True, True]])

    out = normalise(scores, valid, "minmax")

    # low 1, span 4 -> 0.5, 0, -, 1, 0.75; fill = mean(0.5, 0, 1, 0.75) = 0.5625.
    np.testing.assert_allclose(out, [[0.5, 0.0, 0.5625, 1.0, 0.75]], rtol=1e-6)


def test_rank_spreads_valid_entries_evenly_and_fills_with_half():
    scores = np.array([[3.0, 1.0, 2.0, 5.0, 4.0]])
    valid = np.array([[True, True, False, True, True]])

    out = normalise(scores, valid, "rank")

    # valid 1 < 3 < 4 < 5 -> ranks 0..3 over 3; fill = mean(1/3, 0, 1, 2/3) = 0.5.
    np.testing.assert_allclose(out, [[1 / 3, 0.0, 0.5, 1.0, 2 / 3]], rtol=1e-6)


def test_normalise_works_per_row():
    scores = np.array([[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]])
    valid = np.ones((2, 3), dtype=bool)

    out = normalise(scores, valid, "minmax")

    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0], [0.0, 1.0, 0.5]], rtol=1e-6)


@pytest.mark.parametrize("method", ["zscore", "minmax", "rank"])
def test_row_without_valid_entries_is_all_zero(method):
    scores = np.array([[1.0, 2.0, 3.0]])
    valid = np.zeros((1, 3), dtype=bool)

    out = normalise(scores, valid, method)

    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_constant_row_normalises_without_nan(method):
    scores = np.array([[2.0, 2.0, 2.0]])
    valid = np.ones((1, 3), dtype=bool)

    out = normalise(scores, valid, method)

    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0]])


def test_normalise_returns_float32():
    out = normalise(np.array([[1.0, 2.0]]), np.ones((1, 2), dtype=bool), "zscore")

    assert out.dtype == np.float32


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="unknown normalisation 'softmax'"):
        normalise(np.zeros((1, 2)), np.ones((1, 2), dtype=bool), "softmax")


# --- top_k -----------------------------------------------------------------------------------


def test_top_k_orders_best_first():
    scores = np.array([[0.1, 0.5, 0.3, 0.9], [0.4, 0.2, 0.8, 0.6]])
    candidates = np.ones((2, 4), dtype=bool)

    best, best_scores = top_k(scores, candidates, 2)

    np.testing.assert_array_equal(best, [[3, 1], [2, 3]])
    np.testing.assert_allclose(best_scores, [[0.9, 0.5], [0.8, 0.6]])


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([[0.2, 0.5, 0.5, 0.1, 0.5]])

    best, _ = top_k(scores, np.ones((1, 5), dtype=bool), 3)

    np.testing.assert_array_equal(best, [[1, 2, 4]])


def test_top_k_over_whole_catalog_breaks_ties_by_lower_index():
    scores = np.array([[0.5, 0.5, 0.9, 0.5]])

    best, _ = top_k(scores, np.ones((1, 4), dtype=bool), 4)

    np.testing.assert_array_equal(best, [[2, 0, 1, 3]])


def test_top_k_tie_at_the_cut_goes_to_lower_index():
    scores = np.array([[0.0, 0.0, 1.0, 1.0]])

    best, _ = top_k(scores, np.ones((1, 4), dtype=bool), 1)

    np.testing.assert_array_equal(best, [[2]])


def test_top_k_pads_with_minus_one_when_fewer_candidates_than_k():
    scores = np.array([[0.9, 0.2, 0.8, 0.4, 0.7]])
    candidates = np.array([[False, True, False, True, False]])

    best, best_scores = top_k(scores, candidates, 3)

    np.testing.assert_array_equal(best, [[3, 1, -1]])
    np.testing.assert_array_equal(best_scores, [[0.4, 0.2, -np.inf]])


def test_top_k_with_k_beyond_catalog_returns_every_candidate():
    scores = np.array([[0.3, 0.9, 0.6]])
    candidates = np.array([[True, False, True]])

    best, _ = top_k(scores, candidates, 10)

    np.testing.assert_array_equal(best[0][best[0] >= 0], [2, 0])


def test_top_k_never_returns_a_seen_item():
    # The seen items (0 and 2) score highest; they must still never come back, not even as filler.
    scores = np.array([[9.0, 1.0, 8.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    seen = ragged_mask(pd.Series([[0, 2], [3]]), 4)

    best, _ = top_k(scores, ~seen, 4)

    np.testing.assert_array_equal(best, [[3, 1, -1, -1], [2, 1, 0, -1]])


# --- target_ranks ----------------------------------------------------------------------------


def test_target_ranks_counts_better_candidates_and_ties_against_the_target():
    scores = np.array(
        [
            [0.9, 0.5, 0.7, 0.5, 0.1],
            [0.9, 0.5, 0.7, 0.5, 0.1],
            [0.9, 0.5, 0.7, 0.5, 0.1],
            [0.9, 0.5, 0.7, 0.5, 0.1],
        ]
    )
    candidates = np.tile([False, True, True, True, True], (4, 1))  # item 0 was seen
    target = np.array([3, 2, 4, 1])

    ranks = target_ranks(scores, candidates, target)

    # 3: beaten by 2 and tied with 1 -> 3; 2: only the seen 0 is higher -> 1; 4: last -> 4;
    # 1: beaten by 2 and tied with 3 -> 3.
    np.testing.assert_array_equal(ranks, [3, 1, 4, 3])


# --- weight_grid -----------------------------------------------------------------------------


def test_weight_grid_over_three_parts_at_half_step_has_six_points():
    grid = weight_grid(0.5, ("cf", "text", "pop"))

    as_tuples = sorted((w["cf"], w["text"], w["pop"]) for w in grid)
    assert as_tuples == [
        (0.0, 0.0, 1.0),
        (0.0, 0.5, 0.5),
        (0.0, 1.0, 0.0),
        (0.5, 0.0, 0.5),
        (0.5, 0.5, 0.0),
        (1.0, 0.0, 0.0),
    ]
    assert all(w["recent"] == 0.0 for w in grid)


@pytest.mark.parametrize(("step", "size"), [(1.0, 5), (0.5, 15), (0.25, 70), (0.1, 1001)])
def test_weight_grid_size_and_every_point_sums_to_one(step, size):
    grid = weight_grid(step)

    assert len(grid) == size
    assert len({tuple(w.values()) for w in grid}) == size
    for weights in grid:
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
        assert min(weights.values()) >= 0.0
    assert {"cf": 1.0, "cooc": 0.0, "text": 0.0, "recent": 0.0, "pop": 0.0, "next": 0.0} in grid
    assert {"cf": 0.0, "cooc": 0.0, "text": 0.0, "recent": 0.0, "pop": 1.0, "next": 0.0} in grid
    # The what-came-next part is mixed in after the grid's pick, never searched in it.
    assert all(w["next"] == 0.0 for w in grid)


def test_with_next_scales_every_weight_and_stays_on_the_simplex():
    mixed = with_next({"cf": 0.5, "cooc": 0.3, "pop": 0.2}, 0.1)

    assert mixed == {
        "cf": 0.45,
        "cooc": 0.27,
        "text": 0.0,
        "recent": 0.0,
        "pop": 0.18,
        "next": 0.1,
    }
    assert sum(mixed.values()) == pytest.approx(1.0)


# --- helpers ---------------------------------------------------------------------------------


def test_stack_vectors_zero_fills_missing_rows():
    matrix, present = stack_vectors(pd.Series([np.array([1.0, 2.0]), None, [3.0, 4.0]]), 2)

    np.testing.assert_array_equal(matrix, [[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_array_equal(present, [True, False, True])
    assert matrix.dtype == np.float32


def test_ragged_mask_marks_listed_indices():
    mask = ragged_mask(pd.Series([[2, 0], None, np.array([1]), []]), 3)

    np.testing.assert_array_equal(
        mask,
        [[True, False, True], [False, False, False], [False, True, False], [False] * 3],
    )


# --- recommend_block -------------------------------------------------------------------------


def _catalog(*, e_has_text: bool = True) -> ItemCatalog:
    """Five items; text vectors are unit length, ALS factors have rank 2; co-occurrence
    neighbours a-d 0.9, c-d 0.7, a-b 0.5, b-e 0.4 (symmetric, up to two per item)."""
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]], dtype=np.float32)
    has_text = np.array([True, True, True, True, e_has_text])
    if not e_has_text:
        text[4] = 0.0
    return with_text_neighbours(
        ItemCatalog(
            ids=np.array(["a", "b", "c", "d", "e"]),
            cf=np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 2]], dtype=np.float32),
            has_cf=np.ones(5, dtype=bool),
            text=text,
            has_text=has_text,
            pop=np.array([1.0, 2.0, 0.0, 3.0, 4.0], dtype=np.float32),
            neighbours=np.array([[3, 1], [0, 4], [3, -1], [0, 2], [1, -1]]),
            neighbour_sims=np.array(
                [[0.9, 0.5], [0.5, 0.4], [0.7, 0.0], [0.9, 0.7], [0.4, 0.0]], dtype=np.float32
            ),
            text_neighbours=np.full((5, 0), -1),
            text_neighbour_sims=np.zeros((5, 0), np.float32),
            next_items=np.full((5, 0), -1),
            next_sims=np.zeros((5, 0), np.float32),
        ),
        4,
    )


def with_text_neighbours(catalog: ItemCatalog, m: int) -> ItemCatalog:
    """The catalog with its ``m`` closest items by text, from its own text vectors (items
    without text are nobody's neighbour, as in the item_text_neighbours table)."""
    texted = np.flatnonzero(catalog.has_text)
    top, sims = closest_items(catalog.text[texted], catalog.text[texted], np.arange(len(texted)), m)
    catalog.text_neighbours = np.full((len(catalog), top.shape[1]), -1)
    catalog.text_neighbours[texted] = texted[top]
    catalog.text_neighbour_sims = np.zeros(catalog.text_neighbours.shape, np.float32)
    catalog.text_neighbour_sims[texted] = sims
    return catalog


def _block() -> pd.DataFrame:
    """A cold user (no ALS factors) who saw b then a, and a warm user who saw c."""
    return pd.DataFrame(
        {
            "user_id": ["cold", "warm"],
            "factors": [None, np.array([1.0, 0.0])],
            "embedding": [np.array([1.0, 0.0]), np.array([0.0, 1.0])],
            "seen": [np.array([1, 0]), np.array([2])],  # newest first
        }
    )


def _recommend(catalog: ItemCatalog, models=None) -> pd.DataFrame:
    return recommend_block(
        _block(), catalog, models or {"hybrid": HYBRID}, k=3, method="minmax", history_cap=50
    )


def test_recommend_block_ranks_cold_user_by_text():
    recs = _recommend(_catalog())
    cold = recs[recs["user_id"] == "cold"]

    # Candidates c, d, e. text raw 0.6, 0.8, -0.6 -> minmax 6/7, 1, 0; pop raw 0, 3, 4 -> 0, .75, 1;
    # no CF for this user -> 0. Hybrid: c 0.3*6/7 = 0.257143, d 0.3 + 0.075 = 0.375, e 0.1.
    assert cold["item_id"].tolist() == ["d", "c", "e"]
    assert cold["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(cold["score"], [0.375, 0.2571429, 0.1], rtol=1e-5)
    np.testing.assert_allclose(cold["text_score"], [1.0, 6 / 7, 0.0], rtol=1e-5)
    np.testing.assert_allclose(cold["pop_score"], [0.75, 0.0, 1.0], rtol=1e-5)
    np.testing.assert_array_equal(cold["cf_score"], [0.0, 0.0, 0.0])


def test_recommend_block_ranks_warm_user_by_all_parts():
    recs = _recommend(_catalog())
    warm = recs[recs["user_id"] == "warm"]

    # Candidates a, b, d, e. cf 1, 0, 2, 0 -> .5, 0, 1, 0; text 0, 1, .6, .8 (already 0..1);
    # pop 1, 2, 3, 4 -> 0, 1/3, 2/3, 1. Hybrid: a .3, b .333333, d .846667, e .34 -> top 3 d, e, b.
    assert warm["item_id"].tolist() == ["d", "e", "b"]
    np.testing.assert_allclose(warm["score"], [0.8466667, 0.34, 0.3333333], rtol=1e-5)
    np.testing.assert_allclose(warm["cf_score"], [1.0, 0.0, 0.0], rtol=1e-5)


def test_recommend_block_score_is_weighted_sum_of_parts():
    recs = _recommend(_catalog())

    fused = 0.6 * recs["cf_score"] + 0.3 * recs["text_score"] + 0.1 * recs["pop_score"]
    np.testing.assert_allclose(recs["score"], fused, rtol=1e-6)


def test_recommend_block_never_recommends_seen_items():
    recs = _recommend(_catalog())

    assert set(recs.loc[recs["user_id"] == "cold", "item_id"]).isdisjoint({"a", "b"})
    assert "c" not in set(recs.loc[recs["user_id"] == "warm", "item_id"])


def test_recommend_block_reasons_name_the_dominant_part():
    recs = _recommend(_catalog())
    keys = zip(recs["user_id"], recs["item_id"], strict=True)
    reasons = dict(zip(keys, recs["reason"], strict=True))

    # d's text is nearest a (0.8 vs 0.6 to b); c's is nearest b (0.8 vs 0.6 to a).
    assert reasons[("cold", "d")] == "similar to a"
    assert reasons[("cold", "c")] == "similar to b"
    assert reasons[("cold", "e")] == "popular"  # text 0, pop 0.1
    assert reasons[("warm", "d")] == "liked by similar users"  # cf 0.6 > text 0.18
    assert reasons[("warm", "e")] == "similar to c"
    assert reasons[("warm", "b")] == "similar to c"
    pairs = zip(recs["user_id"], recs["item_id"], strict=True)
    named = dict(zip(pairs, recs["reason_item_id"], strict=True))
    assert named[("cold", "d")] == "a" and named[("warm", "b")] == "c"
    assert named[("cold", "e")] is None and named[("warm", "d")] is None


def test_recommend_block_history_cap_limits_the_items_a_reason_names():
    recs = recommend_block(
        _block(), _catalog(), {"hybrid": HYBRID}, k=3, method="minmax", history_cap=1
    )
    cold = recs[recs["user_id"] == "cold"]

    # Only the newest seen item (b) may be named now.
    assert cold["reason"].tolist() == ["similar to b", "similar to b", "popular"]


def test_recommend_block_one_frame_per_model():
    models = {"hybrid": HYBRID, "popularity": {"cf": 0.0, "text": 0.0, "pop": 1.0}}

    recs = _recommend(_catalog(), models)
    popular = recs[recs["model"] == "popularity"]

    assert len(recs) == 12
    assert popular.loc[popular["user_id"] == "cold", "item_id"].tolist() == ["e", "d", "c"]
    assert popular.loc[popular["user_id"] == "warm", "item_id"].tolist() == ["e", "d", "b"]
    np.testing.assert_allclose(popular["score"], popular["pop_score"], rtol=1e-6)


def test_single_signal_model_reason_names_that_signal():
    models = {"popularity": {"cf": 0.0, "text": 0.0, "pop": 1.0}}

    recs = _recommend(_catalog(), models)

    # The cold user's third pick, c, is the least popular candidate: pop part 0 under minmax.
    assert set(recs["reason"]) == {"popular"}


def test_recommend_block_user_with_too_few_candidates_gets_fewer_rows():
    block = _block()
    block.at[0, "seen"] = np.array([0, 1, 2, 3])

    recs = recommend_block(
        block, _catalog(), {"hybrid": HYBRID}, k=3, method="minmax", history_cap=50
    )

    assert recs.loc[recs["user_id"] == "cold", "item_id"].tolist() == ["e"]


def test_item_without_text_is_never_similar_to_a_seen_item():
    recs = _recommend(_catalog(e_has_text=False))
    e = recs[(recs["user_id"] == "cold") & (recs["item_id"] == "e")]

    # e's text part is the fill 0.5 (weighted 0.15), its pop part 1 (weighted 0.1).
    assert len(e) == 1
    assert not e["reason"].iloc[0].startswith("similar to")


def test_text_reason_without_history_says_it_matches_reviews():
    block = pd.DataFrame(
        {
            "user_id": ["new"],
            "factors": [None],
            "embedding": [np.array([1.0, 0.0])],
            "seen": [None],
        }
    )

    recs = recommend_block(
        block, _catalog(), {"text": {"text": 1.0}}, k=2, method="minmax", history_cap=50
    )

    # text raw a 1, b 0, c .6, d .8, e -.6: the best two are a and d.
    assert recs["item_id"].tolist() == ["a", "d"]
    assert recs["reason"].tolist() == ["matches your reviews", "matches your reviews"]


# --- recent history part -----------------------------------------------------------------------


def test_padded_history_keeps_the_newest_items_and_pads():
    seen = pd.Series([np.array([4, 1, 0]), None, np.array([2])])

    np.testing.assert_array_equal(padded_history(seen, 2), [[4, 1], [-1, -1], [2, -1]])


def test_recent_similarity_weights_the_newest_item_most():
    history = np.array([[1, 0], [-1, -1]])  # user 0 saw b (newest) then a; user 1 saw nothing

    scores, has = recent_similarity(history, _catalog(), half_life=1.0, sharpness=1.0)

    # 1 * sim(b, .) + 0.5 * sim(a, .): b = (0, 1), a = (1, 0).
    np.testing.assert_allclose(scores[0], [0.5, 1.0, 1.1, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(scores[1], np.zeros(5))
    np.testing.assert_array_equal(has, [True, False])


def test_recent_similarity_sharpness_lets_the_closest_history_item_win():
    catalog = _catalog()
    catalog.text[4] = np.array([0.1, 0.995]) / np.hypot(0.1, 0.995)  # e: nearly b
    catalog = with_text_neighbours(catalog, 4)
    history = np.array([[1, 0]])  # b and a, weighted alike (half-life huge)

    flat, _ = recent_similarity(history, catalog, half_life=1e9, sharpness=1.0)
    sharp, _ = recent_similarity(history, catalog, half_life=1e9, sharpness=40.0)

    # Sharpness 1: c and d are fairly like both (0.6 + 0.8 = 1.4), e is like b alone (~1.09).
    assert flat[0, 2] == pytest.approx(1.4, rel=1e-5)
    assert flat[0, 2] > flat[0, 4]
    # Sharpness 40: 0.8 ** 40 is ~1e-4, e's ~0.995 ** 40 ~0.8: the near-duplicate of b wins.
    assert sharp[0, 2] == pytest.approx(0.6**40 + 0.8**40, rel=1e-4)
    assert sharp[0, 4] > 100 * sharp[0, 2]


def test_closest_items_best_first_without_the_item_itself():
    catalog = _catalog()

    top, sims = closest_items(catalog.text[[2, 0]], catalog.text, np.array([2, 0]), 2)

    # c (0.6, 0.8): d 0.96, b 0.8, e 0.28, a 0.6. a (1, 0): d 0.8, c 0.6, e -0.6, b 0.
    np.testing.assert_array_equal(top, [[3, 1], [3, 2]])
    np.testing.assert_allclose(sims, [[0.96, 0.8], [0.8, 0.6]], rtol=1e-6)


def test_closest_items_never_more_than_the_other_items():
    catalog = _catalog()

    top, _ = closest_items(catalog.text, catalog.text, np.arange(5), 100)

    assert top.shape == (5, 4)
    assert not (top == np.arange(5)[:, None]).any()


@pytest.mark.parametrize("sharpness", [2.0, 40.0])
def test_sharpened_recent_similarity_over_every_neighbour_is_the_dense_sum(sharpness):
    catalog = _catalog()
    history = np.array([[1, 0], [2, -1]])  # newest first
    recency = np.array([1.0, 0.5])

    scores, has = recent_similarity(history, catalog, half_life=1.0, sharpness=sharpness)

    dense = catalog.text @ catalog.text.T
    expected = np.zeros((2, 5))
    for row, items in enumerate(history):
        for position, item in enumerate(items[items >= 0]):
            expected[row] += (
                recency[position] * np.sign(dense[item]) * np.abs(dense[item]) ** sharpness
            )
    candidates = ~ragged_mask(pd.Series([np.array([1, 0]), np.array([2])]), 5)
    # A history item's similarity to itself is left out: it is never a candidate.
    np.testing.assert_allclose(scores[candidates], expected[candidates], rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(has, [True, True])


def test_sharpened_recent_similarity_reaches_only_the_text_neighbours():
    catalog = with_text_neighbours(_catalog(), 1)  # c's closest is d; d's is c

    scores, _ = recent_similarity(np.array([[2]]), catalog, half_life=1.0, sharpness=2.0)

    np.testing.assert_allclose(scores[0], [0.0, 0.0, 0.0, 0.96**2, 0.0], rtol=1e-6)


@pytest.mark.parametrize("exponent", [1, 2, 3, 40, 2.5, 0.5])
def test_signed_power_keeps_the_sign(exponent):
    x = np.array([[-0.9, -0.5, 0.0, 0.3, 1.0]], dtype=np.float32)

    expected = np.sign(x) * np.abs(x.astype(np.float64)) ** exponent
    np.testing.assert_allclose(signed_power(x, exponent), expected, rtol=1e-5, atol=1e-30)


def test_recent_similarity_ignores_items_without_text():
    history = np.array([[4, 0]])  # e has no text: only a (weight 0.5, second newest) counts

    scores, has = recent_similarity(
        history, _catalog(e_has_text=False), half_life=1.0, sharpness=1.0
    )

    np.testing.assert_allclose(scores[0], [0.5, 0.0, 0.3, 0.4, 0.0], rtol=1e-6)
    assert has[0]


def test_recent_only_model_ranks_by_similarity_to_the_newest_item():
    recs = recommend_block(
        _block(),
        _catalog(),
        {"recent": {"cf": 0.0, "text": 0.0, "recent": 1.0, "pop": 0.0}},
        k=3,
        method="minmax",
        history_cap=50,
        recent_half_life=1.0,
    )
    cold = recs[recs["user_id"] == "cold"]

    # Cold user's recent vector v = (0.5, 1)/|.|: c (0.6, 0.8) -> 1.1, e (-0.6, 0.8) -> 0.5,
    # d (0.8, 0.6) -> 1.0 (all / |v|): c, d, e.
    assert cold["item_id"].tolist() == ["c", "d", "e"]
    # c is most like b = (0, 1) among the cold user's history (0.8 against a's 0.6).
    assert cold["reason"].iloc[0] == "similar to b"
    np.testing.assert_allclose(cold["score"], cold["recent_score"], rtol=1e-6)


# --- co-occurrence part ------------------------------------------------------------------------


def test_cooc_scores_sum_neighbour_similarities_weighted_by_recency():
    history = np.array([[1, 0], [2, -1], [-1, -1]])  # b (newest) then a; c only; nothing

    catalog = _catalog()
    scores = history_votes(history, catalog.neighbours, catalog.neighbour_sims, half_life=1.0)

    # Row 0: b votes a .5, e .4 (weight 1); a votes d .9, b .5 (weight .5).
    np.testing.assert_allclose(scores[0], [0.5, 0.25, 0.0, 0.45, 0.4], rtol=1e-6)
    np.testing.assert_allclose(scores[1], [0.0, 0.0, 0.0, 0.7, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(scores[2], np.zeros(5))


def test_catalog_without_neighbours_gives_zero_cooc_scores():
    catalog = _catalog()
    catalog.neighbours = np.full((5, 0), -1)
    catalog.neighbour_sims = np.zeros((5, 0), np.float32)

    scores = history_votes(
        np.array([[1, 0]]), catalog.neighbours, catalog.neighbour_sims, half_life=1.0
    )

    np.testing.assert_array_equal(scores, np.zeros((1, 5)))


def test_cooc_model_ranks_neighbours_of_recent_items_and_names_the_partner():
    recs = recommend_block(
        _block(),
        _catalog(),
        {"cooc": {"cooc": 1.0}},
        k=3,
        method="minmax",
        history_cap=50,
        cooc_half_life=1.0,
    )
    cold = recs[recs["user_id"] == "cold"]
    warm = recs[recs["user_id"] == "warm"]

    # Cold (b, a): candidates c 0, d .45, e .4 -> d, e, c. Warm (c): only d is a neighbour.
    assert cold["item_id"].tolist() == ["d", "e", "c"]
    assert cold["reason"].tolist()[:2] == ["often had with a", "often had with b"]
    assert warm["item_id"].iloc[0] == "d"
    assert warm["reason"].iloc[0] == "often had with c"
    np.testing.assert_allclose(cold["score"], cold["cooc_score"], rtol=1e-6)


def _with_transitions(catalog: ItemCatalog) -> ItemCatalog:
    """What came next: after b, e (.5) and c (.3); after a, c (.9); after c, a (.6)."""
    catalog.next_items = np.array([[2, -1], [4, 2], [0, -1], [-1, -1], [-1, -1]])
    catalog.next_sims = np.array(
        [[0.9, 0.0], [0.5, 0.3], [0.6, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32
    )
    return catalog


@pytest.mark.parametrize(
    ("next_items", "cold_order", "cold_reasons"),
    [
        # Only b (newest) votes: e .5, c .3, d 0.
        (1, ["e", "c", "d"], ["often had after b", "often had after b"]),
        # b votes e .5, c .3 at weight 1; a votes c .9 at weight .5: c .75, e .5. a cast the
        # larger vote for c, so a is named.
        (2, ["c", "e", "d"], ["often had after a", "often had after b"]),
    ],
)
def test_next_model_sums_what_came_after_the_newest_items_and_names_the_one_before(
    next_items, cold_order, cold_reasons
):
    recs = recommend_block(
        _block(),
        _with_transitions(_catalog()),
        {"next": {"next": 1.0}},
        k=3,
        method="minmax",
        history_cap=50,
        next_items=next_items,
        next_half_life=1.0,
    )
    cold = recs[recs["user_id"] == "cold"]
    warm = recs[recs["user_id"] == "warm"]

    assert cold["item_id"].tolist() == cold_order
    assert cold["reason"].tolist()[:2] == cold_reasons
    assert cold["reason_item_id"].tolist()[:2] == [r[-1] for r in cold_reasons]
    np.testing.assert_allclose(cold["score"], cold["next_score"], rtol=1e-6)
    # Warm had c, after which a came: directed, so d (had with c, never after it) is not named.
    assert warm["item_id"].iloc[0] == "a"
    assert warm["reason"].iloc[0] == "often had after c"


def _contributions(**parts: float) -> np.ndarray:
    return np.array([[parts.get(p, -np.inf) for p in PARTS]], dtype=np.float32)


def test_popular_reason_only_where_popularity_adds_the_given_share():
    pop = PARTS.index("pop")
    # pop 0.5 of the positive 0.5 + 0.3 + 0.2: a 50% share, so popularity explains it.
    assert dominant_parts(_contributions(pop=0.5, cf=0.3, cooc=0.2), 0.5)[0] == pop
    # pop 0.4 is still the largest part but under half of 0.4 + 0.35 + 0.3: the next part.
    picked = dominant_parts(_contributions(pop=0.4, cf=0.35, cooc=0.3), 0.5)[0]
    assert picked == PARTS.index("cf")
    # A negative or undefined part never counts towards the share, nor replaces popularity.
    assert dominant_parts(_contributions(pop=0.4, cf=-0.35, recent=0.3), 0.5)[0] == pop
    assert dominant_parts(_contributions(pop=0.4), 0.5)[0] == pop
    # At share 0 the largest part always wins, as before the setting existed.
    assert dominant_parts(_contributions(pop=0.4, cf=0.35, cooc=0.3), 0.0)[0] == pop


def test_recommend_block_names_the_personal_part_when_popularity_is_a_minor_share():
    # The warm user's item d: z-scores cf 1.51 and pop 0.45, so with weights 0.2 / 0.8
    # popularity adds 0.36 and cf 0.30: the larger part, but 54% of the positive total.
    weights = {"cf": 0.2, "cooc": 0.0, "text": 0.0, "recent": 0.0, "pop": 0.8}

    def reason_of_d(share: float) -> str:
        recs = recommend_block(
            _block(), _catalog(), {"m": weights}, k=3, method="zscore", popular_share=share
        )
        return recs[(recs["user_id"] == "warm") & (recs["item_id"] == "d")]["reason"].iloc[0]

    assert reason_of_d(0.5) == "popular"
    assert reason_of_d(0.6) == "liked by similar users"


# --- re-rank -------------------------------------------------------------------------------


def _scores(seed: int, users: int = 40, items: int = 30):
    rng = np.random.default_rng(seed)
    fused = rng.standard_normal((users, items)).astype(np.float32)
    debiased = fused - 2.0 * rng.standard_normal((users, items)).astype(np.float32)
    candidates = rng.random((users, items)) > 0.3
    candidates[0, :3], candidates[0, 3:] = True, False  # a user with only three candidates
    return fused, debiased, candidates


def test_rerank_keeps_the_head_and_fills_the_tail_by_debiased_score():
    fused, debiased, candidates = _scores(1)
    best, scores = rerank_top_k(fused, debiased, candidates, 10, 3)
    plain, _ = top_k(fused, candidates, 10)
    assert (best[1:, :7] == plain[1:, :7]).all()
    for row in range(1, len(best)):
        rest = candidates[row].copy()
        rest[plain[row, :7]] = False
        wanted = np.argsort(-np.where(rest, debiased[row], -np.inf), kind="stable")[:3]
        assert set(best[row, 7:]) == set(wanted)
        assert (np.diff(scores[row]) <= 0).all()  # shown in fused order: scores fall with rank
        assert len(set(best[row])) == 10 and candidates[row, best[row]].all()
    assert sorted(best[0, :3]) == [0, 1, 2] and (best[0, 3:] == -1).all()


def test_rerank_without_strength_or_slots_is_top_k():
    fused, debiased, candidates = _scores(2)
    plain = top_k(fused, candidates, 10)
    for got in (
        rerank_top_k(fused, None, candidates, 10, 3),
        rerank_top_k(fused, debiased, candidates, 10, 0),
    ):
        assert (got[0] == plain[0]).all()


def test_reranked_target_ranks_are_the_target_places_in_the_re_ranked_list():
    fused, debiased, candidates = _scores(3)
    rng = np.random.default_rng(4)
    target = np.array([rng.choice(np.flatnonzero(c)) for c in candidates])
    ranks = reranked_target_ranks(fused, debiased, candidates, target, 10, 3)
    best, _ = rerank_top_k(fused, debiased, candidates, 10, 3)
    for row, t in enumerate(target):
        place = np.flatnonzero(best[row] == t)
        assert ranks[row] == (place[0] + 1 if len(place) else ranks[row])
        assert len(place) or ranks[row] > 10
    assert (ranks <= 10).sum() > 5 and (ranks > 10).sum() > 5


def test_tie_break_is_a_fixed_small_order_that_differs_between_users():
    items = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
    ties = tie_break(np.array(["u1", "u2"], dtype=object), items)
    assert ties.shape == (2, 6) and ties.dtype == np.float32
    assert (ties >= 0).all() and (ties < TIE_BREAK).all()
    assert (np.argsort(ties[0]) != np.argsort(ties[1])).any()
    again = tie_break(np.array(["u1", "u2"], dtype=object), np.stack([items, items]))
    np.testing.assert_array_equal(ties, again)  # one shared item list or a matrix of them
