"""The candidate kernel is the full-ranking kernel restricted to each user's candidates: with
every unseen item a candidate (and the votes Spark would sum), both give the same top-K and the
same target ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udfs import block_candidates, candidate_kernel, full_ranking, ranking_kernel

N_ITEMS, RANK, DIM, NEIGHBOURS = 40, 4, 8, 6
SETTINGS = {
    "recent_half_life": 1.0,
    "recent_sharpness": 3.0,
    "cooc_half_life": 2.0,
    "next_items": 2,
    "next_half_life": 1.0,
}
WEIGHTS = {"cf": 0.3, "cooc": 0.2, "text": 0.2, "recent": 0.1, "pop": 0.1, "next": 0.1}


def unit(rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(3)
    text = unit(rng, N_ITEMS, DIM)
    has_text = rng.random(N_ITEMS) > 0.15
    text[~has_text] = 0
    has_cf = rng.random(N_ITEMS) > 0.1
    cf = rng.standard_normal((N_ITEMS, RANK)).astype(np.float32) * has_cf[:, None]
    own = np.arange(N_ITEMS)
    text_idx, text_sims = ranking_kernel.closest_items(text, text, own, NEIGHBOURS)
    text_idx[~has_text] = -1
    text_sims[~has_text] = 0
    catalog = ranking_kernel.ItemCatalog(
        ids=np.array([f"i{i:02d}" for i in range(N_ITEMS)]),
        cf=cf,
        has_cf=has_cf,
        text=text,
        has_text=has_text,
        pop=rng.random(N_ITEMS).astype(np.float32),
        neighbours=rng.integers(0, N_ITEMS, (N_ITEMS, NEIGHBOURS)),
        neighbour_sims=rng.random((N_ITEMS, NEIGHBOURS)).astype(np.float32),
        text_neighbours=text_idx,
        text_neighbour_sims=text_sims,
        next_items=rng.integers(0, N_ITEMS, (N_ITEMS, NEIGHBOURS)),
        next_sims=rng.random((N_ITEMS, NEIGHBOURS)).astype(np.float32),
    )
    users = 7
    seen = [list(rng.choice(N_ITEMS, rng.integers(1, 6), replace=False)) for _ in range(users)]
    seen[3] = []  # a user without history: only ALS, text and popularity rank it
    block = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(users)],
            "factors": [rng.standard_normal(RANK).astype(np.float32) for _ in range(users)],
            "embedding": [unit(rng, 1, DIM)[0] for _ in range(users)],
            "seen": [np.asarray(s, dtype=np.int64) for s in seen],
            "target": [int(rng.integers(0, N_ITEMS)) for _ in range(users)],
        }
    )
    block.loc[5, "factors"] = None  # a user without ALS factors
    return catalog, block


def as_candidates(catalog, block, keep=None):
    """Every unseen item of each user as a candidate pair, with the votes Spark would sum."""
    history = ranking_kernel.padded_history(block["seen"], 50)
    cooc = ranking_kernel.history_votes(
        history, catalog.neighbours, catalog.neighbour_sims, SETTINGS["cooc_half_life"]
    )
    after = ranking_kernel.history_votes(
        history[:, : SETTINGS["next_items"]],
        catalog.next_items,
        catalog.next_sims,
        SETTINGS["next_half_life"],
    )
    recent, has_recent = ranking_kernel.recent_similarity(
        history, catalog, SETTINGS["recent_half_life"], SETTINGS["recent_sharpness"]
    )
    rows = []
    for u, user in block.iterrows():
        for i in range(N_ITEMS):
            if i in set(user["seen"]) or (keep is not None and not keep(u, i)):
                continue
            rows.append(
                {
                    "user_id": user["user_id"],
                    "item_id": catalog.ids[i],
                    "item_factors": catalog.cf[i] if catalog.has_cf[i] else None,
                    "item_embedding": catalog.text[i] if catalog.has_text[i] else None,
                    "pop": catalog.pop[i],
                    "cooc": cooc[u, i] if cooc[u, i] else None,
                    "cooc_from": None,
                    "recent": recent[u, i] if recent[u, i] else None,
                    "recent_from": None,
                    "next": after[u, i] if after[u, i] else None,
                    "next_from": None,
                }
            )
    users = block.assign(
        has_history=[len(s) > 0 for s in block["seen"]],
        has_text_history=has_recent,
        target=[catalog.ids[t] for t in block["target"]],
    )
    return pd.DataFrame(rows), users


def test_top_k_over_every_unseen_item_is_full_ranking(world):
    catalog, block = world
    full = full_ranking.recommend_block(
        block, catalog, {"m": WEIGHTS}, k=5, method="zscore", history_cap=50, **SETTINGS
    )
    pairs, users = as_candidates(catalog, block)
    over = candidate_kernel.recommend_group(pairs, users, {"m": WEIGHTS}, k=5, method="zscore")
    key = ["user_id", "rank"]
    full, over = full.sort_values(key), over.sort_values(key)
    assert list(over.columns) == list(candidate_kernel.RECOMMENDATION_COLUMNS)
    assert full["item_id"].tolist() == over["item_id"].tolist()
    np.testing.assert_allclose(full["score"], over["score"], rtol=1e-5, atol=1e-5)
    for part in ranking_kernel.PARTS:
        np.testing.assert_allclose(full[f"{part}_score"], over[f"{part}_score"], atol=1e-5)


@pytest.mark.parametrize("method", ["zscore", "minmax", "rank"])
def test_target_ranks_over_every_unseen_item_are_full_ranking(world, method):
    catalog, block = world
    unseen_targets = block[
        [t not in set(s) for t, s in zip(block["target"], block["seen"], strict=True)]
    ]
    full = full_ranking.tune_block(
        unseen_targets, catalog, [WEIGHTS, {"cf": 1.0}], method=method, history_cap=50, **SETTINGS
    )
    pairs, users = as_candidates(catalog, unseen_targets.reset_index(drop=True))
    over = candidate_kernel.tune_group(
        pairs, users, [WEIGHTS, {"cf": 1.0}], method=method, miss_rank=10**6
    )
    key = ["combo", "user_id"]
    merged = full.merge(over, on=key, suffixes=("_full", "_over"))
    assert len(merged) == len(full) == len(over) > 0
    assert (merged["target_rank_full"] == merged["target_rank_over"]).all()


def test_a_target_outside_the_candidates_is_a_miss(world):
    catalog, block = world
    targets = dict(zip(block["user_id"], block["target"], strict=True))
    pairs, users = as_candidates(
        catalog, block, keep=lambda u, i: i != targets[f"u{u}"] and i % 3 == 0
    )
    ranks = candidate_kernel.tune_group(pairs, users, [WEIGHTS], method="zscore", miss_rank=99)
    assert (ranks["target_rank"] == 99).all()
    assert len(ranks) == len(block)


def test_reasons_name_the_history_item_that_voted_most(world):
    catalog, block = world
    pairs, users = as_candidates(catalog, block)
    pairs["recent_from"] = "i07"
    recs = candidate_kernel.recommend_group(
        pairs, users, {"recent": {"recent": 1.0}}, k=3, method="zscore"
    )
    # Only a user whose history has text has a recent part to explain anything with.
    voted = recs["user_id"].isin(users[users["has_text_history"]]["user_id"])
    assert voted.any() and (~voted).any()
    assert (recs[voted]["reason"] == "similar to i07").all()
    assert (recs[voted]["reason_item_id"] == "i07").all()
    assert (recs[~voted]["reason"] == "ranked by the remaining signals").all()


def test_re_ranked_lists_and_target_ranks_match_full_ranking(world):
    catalog, block = world
    models = {"m": {**WEIGHTS, "debias": 2.0}}
    full = full_ranking.recommend_block(
        block, catalog, models, k=5, method="zscore", history_cap=50, rerank_slots=2, **SETTINGS
    )
    plain = full_ranking.recommend_block(
        block, catalog, {"m": WEIGHTS}, k=5, method="zscore", history_cap=50, **SETTINGS
    )
    pairs, users = as_candidates(catalog, block)
    over = candidate_kernel.recommend_group(
        pairs, users, models, k=5, method="zscore", rerank_slots=2
    )
    key = ["user_id", "rank"]
    full, over, plain = (f.sort_values(key) for f in (full, over, plain))
    assert full["item_id"].tolist() == over["item_id"].tolist()
    # The re-rank changed some lists: the tie-break and de-biasing reach the candidate layout.
    assert full["item_id"].tolist() != plain["item_id"].tolist()
    unseen = block[
        [t not in set(s) for t, s in zip(block["target"], block["seen"], strict=True)]
    ].reset_index(drop=True)
    tuned_full = full_ranking.tune_block(
        unseen, catalog, list(models.values()), method="zscore", k=5, rerank_slots=2, **SETTINGS
    )
    pairs, users = as_candidates(catalog, unseen)
    tuned_over = candidate_kernel.tune_group(
        pairs, users, list(models.values()), method="zscore", miss_rank=10**6, k=5, rerank_slots=2
    )
    merged = tuned_full.merge(tuned_over, on=["combo", "user_id"], suffixes=("_full", "_over"))
    listed = merged["target_rank_full"] <= 5
    assert len(merged) == len(unseen) and listed.any()
    assert (merged["target_rank_full"][listed] == merged["target_rank_over"][listed]).all()
    assert (merged["target_rank_over"][~listed] > 5).all()


# --- candidates chosen in memory, block by block (udfs.block_candidates) ---------------------

EVERY = block_candidates.CandidateCounts(
    als=N_ITEMS, cooc=N_ITEMS, text=N_ITEMS, next=N_ITEMS, popular=N_ITEMS
)
FEW = block_candidates.CandidateCounts(als=3, cooc=2, text=2, next=2, popular=1)


def test_in_memory_candidates_holding_every_item_rank_as_full_ranking(world):
    catalog, block = world
    models = {"m": WEIGHTS, "d": {**WEIGHTS, "debias": 2.0}}
    settings = {"k": 5, "method": "zscore", "history_cap": 50, "rerank_slots": 2, **SETTINGS}
    full = full_ranking.recommend_block(block, catalog, models, **settings)
    over = block_candidates.recommend_block(block, catalog, models, EVERY, **settings)
    key = ["model", "user_id", "rank"]
    full, over = full.sort_values(key), over.sort_values(key)
    assert list(over.columns) == list(candidate_kernel.RECOMMENDATION_COLUMNS)
    assert full["item_id"].tolist() == over["item_id"].tolist()
    np.testing.assert_allclose(full["score"], over["score"], rtol=1e-5, atol=1e-5)
    for part in ranking_kernel.PARTS:
        np.testing.assert_allclose(full[f"{part}_score"], over[f"{part}_score"], atol=1e-5)
    unseen = block[[t not in set(s) for t, s in zip(block["target"], block["seen"], strict=True)]]
    grid = [WEIGHTS, {"cf": 1.0}, {**WEIGHTS, "debias": 2.0}]
    tuned_full = full_ranking.tune_block(unseen, catalog, grid, **settings)
    tuned_over = block_candidates.tune_block(
        unseen, catalog, grid, EVERY, miss_rank=10**6, **settings
    )
    merged = tuned_full.merge(tuned_over, on=["combo", "user_id"], suffixes=("_full", "_over"))
    assert len(merged) == len(tuned_full) == len(tuned_over) > 0
    assert (merged["target_rank_full"] == merged["target_rank_over"]).all()


def brute_force_candidates(catalog, block, counts, cap=50):
    """Each user's candidates by their definition, one user and source at a time."""
    chosen = {}
    for _, user in block.iterrows():
        seen = [int(i) for i in user["seen"]][:cap]
        picked = set()
        if user["factors"] is not None:
            cf = np.where(catalog.has_cf, catalog.cf @ user["factors"], -np.inf)
            picked |= set(np.lexsort((np.arange(N_ITEMS), -cf))[: counts.als]) - set(
                np.flatnonzero(~catalog.has_cf)
            )
        for lists, sims, half_life, power, width, n in (
            (
                catalog.neighbours,
                catalog.neighbour_sims,
                SETTINGS["cooc_half_life"],
                1,
                cap,
                counts.cooc,
            ),
            (
                catalog.text_neighbours,
                catalog.text_neighbour_sims,
                SETTINGS["recent_half_life"],
                SETTINGS["recent_sharpness"],
                cap,
                counts.text,
            ),
            (
                catalog.next_items,
                catalog.next_sims,
                SETTINGS["next_half_life"],
                1,
                SETTINGS["next_items"],
                counts.next,
            ),
        ):
            votes = {}
            for pos, item in enumerate(seen[:width]):
                for j, s in zip(lists[item], sims[item], strict=True):
                    if j >= 0:
                        votes[j] = (
                            votes.get(j, 0.0)
                            + 0.5 ** (pos / half_life) * np.sign(s) * abs(s) ** power
                        )
            picked |= {j for j, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:n]}
        picked |= set(np.lexsort((np.arange(N_ITEMS), -catalog.pop))[: counts.popular])
        chosen[user["user_id"]] = {catalog.ids[i] for i in picked - set(user["seen"])}
    return chosen


def test_in_memory_candidates_are_each_sources_best_unseen_items(world):
    catalog, block = world
    slots = block_candidates.block_slots(
        block,
        catalog,
        FEW,
        history_cap=50,
        cooc_half_life=SETTINGS["cooc_half_life"],
        **{k: v for k, v in SETTINGS.items() if k != "cooc_half_life"},
    )
    expected = brute_force_candidates(catalog, block, FEW)
    for row, user in enumerate(slots.user_ids):
        got = slots.item_ids[row][slots.candidates[row]]
        assert list(got) == sorted(got)  # slots in item-id order, as the Spark rows are laid out
        assert set(got) == expected[user], user


def test_in_memory_reasons_name_the_history_item_whose_vote_was_largest(world):
    catalog, block = world
    recs = block_candidates.recommend_block(
        block,
        catalog,
        {"cooc": {"cooc": 1.0}},
        FEW,
        k=3,
        method="zscore",
        history_cap=50,
        **SETTINGS,
    )
    named = recs[recs["reason_item_id"].notna()]
    assert len(named) > 0
    index = {item_id: i for i, item_id in enumerate(catalog.ids)}
    for rec in named.itertuples():
        seen = [int(i) for i in block.set_index("user_id").loc[rec.user_id, "seen"]]
        item = index[rec.item_id]
        votes = {
            catalog.ids[h]: 0.5 ** (pos / SETTINGS["cooc_half_life"])
            * catalog.neighbour_sims[h][catalog.neighbours[h] == item].max()
            for pos, h in enumerate(seen)
            if (catalog.neighbours[h] == item).any()
        }
        assert rec.reason_item_id == max(votes, key=votes.get)
        assert rec.reason == f"often had with {rec.reason_item_id}"


def test_each_sources_best_breaks_ties_at_the_cut_by_the_lower_item():
    scores = np.array([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0, 9.0, 1.0]])
    present = np.ones_like(scores, bool)
    present[1, 0] = False  # not voted for: never chosen, whatever its score
    chosen = block_candidates._best(scores, present, 3)
    assert chosen.tolist() == [
        [True, False, True, True, False, False],
        [False, True, True, False, True, False],
    ]
    # Fewer present items than asked for: every present one.
    few = block_candidates._best(scores, scores > 2.5, 3)
    assert few.tolist() == [[True, False, False, False, False, False], [False] * 4 + [True, False]]
