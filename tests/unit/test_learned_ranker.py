"""The learned ranker's kernel: stage one is the linear hybrid's own order, the feature rows say
what they claim, and the ranker's lists, scores and reasons come from the booster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost

from udfs import full_ranking, learned_ranker, ranking_kernel
from udfs.block_candidates import CandidateCounts
from udfs.reasons import REASONS

N_ITEMS, RANK, DIM, NEIGHBOURS, C = 30, 3, 6, 5, 12
SETTINGS = {
    "recent_half_life": 1.0,
    "recent_sharpness": 2.0,
    "cooc_half_life": 2.0,
    "next_half_life": 1.0,
    "history_cap": 50,
    "next_items": 2,
}
WEIGHTS = {"cf": 0.4, "cooc": 0.2, "text": 0.1, "recent": 0.2, "pop": 0.1, "next": 0.0}


def unit_rows(rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small_world():
    rng = np.random.default_rng(11)
    has_text = np.ones(N_ITEMS, bool)
    has_text[[4, 9]] = False
    text = unit_rows(rng, N_ITEMS, DIM) * has_text[:, None]
    text_idx, text_sims = ranking_kernel.closest_items(text, text, np.arange(N_ITEMS), NEIGHBOURS)
    catalog = ranking_kernel.ItemCatalog(
        ids=np.array([f"item{i:02d}" for i in range(N_ITEMS)]),
        cf=rng.standard_normal((N_ITEMS, RANK)).astype(np.float32),
        has_cf=np.ones(N_ITEMS, bool),
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
    users = 40
    block = pd.DataFrame(
        {
            "user_id": [f"user{u:02d}" for u in range(users)],
            "factors": [rng.standard_normal(RANK).astype(np.float32) for _ in range(users)],
            "embedding": [unit_rows(rng, 1, DIM)[0] for _ in range(users)],
            "seen": [
                rng.choice(N_ITEMS, rng.integers(1, 6), replace=False).astype(np.int64)
                for _ in range(users)
            ],
            "last_ts": 1_000_000.0 - 86_400.0 * np.arange(users),
        }
    )
    block.loc[2, "factors"] = None  # no ALS factors: cf undefined for every candidate
    context = learned_ranker.ItemContext(
        age_days=np.linspace(1, 300, N_ITEMS), trend=rng.random(N_ITEMS), reference_ts=1_000_000.0
    )
    return catalog, block, context


def candidates_of(world, **overrides):
    catalog, block, context = world
    settings = dict(n_candidates=C, method="zscore", over_candidates=False, counts=None, **SETTINGS)
    settings.update(overrides)
    return learned_ranker.candidate_set(block, catalog, context, WEIGHTS, **settings)


def column(name):
    return learned_ranker.FEATURES.index(name)


def test_stage_one_is_the_linear_hybrids_own_order(small_world):
    catalog, block, _ = small_world
    candidates = candidates_of(small_world)
    linear = full_ranking.recommend_block(
        block, catalog, {"hybrid": WEIGHTS}, k=C, method="zscore", **SETTINGS
    )
    expected = linear.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)
    got = pd.Series(
        [list(row) for row in candidates.item_ids], index=candidates.user_ids
    ).sort_index()
    assert got.to_dict() == expected.to_dict()
    ranks = candidates.features[:, :, column("linear_rank")]
    assert (ranks == np.arange(C)).all()
    scores = candidates.features[:, :, column("linear_score")]
    assert (np.diff(scores, axis=1) <= 0).all()


def test_features_say_what_they_claim(small_world):
    catalog, block, context = small_world
    candidates = candidates_of(small_world)
    f = candidates.features
    # A user without factors: its cf is undefined, raw and rank missing, the flag down.
    assert np.isnan(f[2, :, column("cf_raw")]).all()
    assert (f[2, :, column("cf_defined")] == 0).all()
    assert not np.isnan(f[0, :, column("cf_raw")]).any()
    # The cf rank orders the raw cf scores, best 0.
    raw = f[0, :, column("cf_raw")]
    assert (f[0, np.argsort(-raw), column("cf_rank")] == np.arange(C)).all()
    # Days since the user's newest event: user u's last event was u days before the reference.
    assert f[7, 0, column("days_since_last")] == pytest.approx(7.0)
    assert f[7, 0, column("history_items")] == pytest.approx(np.log1p(len(block["seen"][7])))
    item = candidates.item_index[5]
    assert np.allclose(f[5, :, column("item_age_days")], context.age_days[item])
    newest = block["seen"][5][0]
    expected = np.where(
        catalog.has_text[item] & catalog.has_text[newest],
        catalog.text[item] @ catalog.text[newest],
        np.nan,
    )
    np.testing.assert_allclose(f[5, :, column("newest_similarity")], expected, rtol=1e-5)


def test_over_candidates_holding_every_item_gives_the_same_candidates(small_world):
    every = CandidateCounts(als=0, cooc=0, text=0, next=0, popular=N_ITEMS)
    full = candidates_of(small_world)
    memory = candidates_of(small_world, over_candidates=True, counts=every)
    assert (np.sort(full.item_index, axis=1) == np.sort(memory.item_index, axis=1)).all()


def fitted_ranker(candidates, target):
    labels = candidates.labels(target)
    x = candidates.features.reshape(-1, len(learned_ranker.FEATURES))
    groups = np.full(len(candidates.user_ids), C)
    model = xgboost.XGBRanker(n_estimators=20, max_depth=3, objective="rank:ndcg")
    model.fit(x, labels.ravel(), group=groups, base_margin=learned_ranker.base_margin(x))
    return model.get_booster()


def test_the_ranker_orders_the_candidates_and_explains_each_pick(small_world):
    candidates = candidates_of(small_world)
    # A target the linear order ranks low but that is the newest-similar item: learnable.
    similarity = np.nan_to_num(candidates.features[:, :, column("newest_similarity")], nan=-2)
    target = candidates.item_index[np.arange(len(similarity)), similarity.argmax(axis=1)]
    model = fitted_ranker(candidates, target)
    recs = learned_ranker.rank_candidates(candidates, model, WEIGHTS, k=5, popular_share=0.5)
    assert (recs.groupby("user_id").size() == 5).all()
    scores = learned_ranker.predict(
        model, candidates.features.reshape(-1, len(learned_ranker.FEATURES))
    ).reshape(candidates.valid.shape)
    first = recs[recs["rank"] == 1].set_index("user_id")["item_id"]
    best = pd.Series(candidates.item_ids[np.arange(len(scores)), scores.argmax(axis=1)])
    assert (first.loc[candidates.user_ids].to_numpy() == best.to_numpy()).all()
    ranks = learned_ranker.target_ranks(candidates, scores, target)
    linear_ranks = learned_ranker.target_ranks(candidates, candidates.linear, target)
    assert ranks.mean() < linear_ranks.mean()
    assert recs["reason"].notna().all()
    assert set(recs["reason"]) - {REASONS["cf"], REASONS["pop"]}


def test_part_shares_add_up_to_the_score_less_the_users_context(small_world):
    candidates = candidates_of(small_world)
    target = candidates.item_index[:, 3]
    model = fitted_ranker(candidates, target)
    rows, cols = np.arange(5), np.zeros(5, np.int64)
    x = candidates.features[rows, cols]
    shap = learned_ranker.contributions(model, x)
    np.testing.assert_allclose(shap.sum(axis=1), learned_ranker.predict(model, x), rtol=1e-4)
    # The bias holds the base margin, the linear score (plus the model's one intercept).
    offset = shap[:, -1] - x[:, column("linear_score")]
    np.testing.assert_allclose(offset, offset[0], atol=1e-5)
    linear_parts = np.tile(np.arange(6, dtype=float), (5, 1))  # the linear share goes to next
    shares = learned_ranker.part_shares(shap, linear_parts, candidates.defined, rows, cols)
    context = [column("history_items"), column("days_since_last")]
    finite = np.where(np.isfinite(shares), shares, 0)
    undefined_share = sum(
        shap[:, i]
        for i, name in enumerate(learned_ranker.FEATURES)
        if learned_ranker.FEATURE_PARTS[name] not in (None, learned_ranker.LINEAR)
        and not candidates.defined[learned_ranker.FEATURE_PARTS[name]][0, 0]
    )
    np.testing.assert_allclose(
        finite.sum(axis=1) + shap[:, context].sum(axis=1) + undefined_share,
        shap.sum(axis=1),
        rtol=1e-4,
        atol=1e-5,
    )


def test_target_ranks_count_ties_against_the_target_and_misses_as_zero(small_world):
    candidates = candidates_of(small_world)
    scores = np.zeros(candidates.valid.shape, np.float32)
    scores[:, 0] = 1.0
    target = candidates.item_index[:, 1].copy()
    target[0] = -7  # not a candidate
    ranks = learned_ranker.target_ranks(candidates, scores, target)
    assert ranks[0] == 0
    assert (ranks[1:] == C).all()  # tied with every other candidate but the first
