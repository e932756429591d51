"""Fold-in is ALS's own user step: a user's fitted preferences give back their ALS factors."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.recommendation import ALS

from hybridrec.models.foldin import AlsSettings, fold_in, gram


def _preferences(implicit: bool, seed: int = 3):
    rng = np.random.default_rng(seed)
    users, items = 40, 30
    pairs = {(u, i) for u in range(users) for i in rng.choice(items, size=6, replace=False)}
    rows = sorted(pairs)
    if implicit:
        values = rng.integers(1, 4, size=len(rows)).astype(float)
    else:
        values = rng.integers(1, 6, size=len(rows)).astype(float)
    return [(int(u), int(i), float(v)) for (u, i), v in zip(rows, values, strict=True)]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_folding_in_the_fitted_preferences_gives_back_the_users_als_factors(spark, implicit):
    prefs = _preferences(implicit)
    settings = AlsSettings(reg_param=0.1, alpha=2.0, implicit=implicit)
    model = ALS(
        rank=8,
        maxIter=8,
        regParam=settings.reg_param,
        alpha=settings.alpha,
        implicitPrefs=implicit,
        userCol="u",
        itemCol="i",
        ratingCol="r",
        seed=1,
        numUserBlocks=2,
        numItemBlocks=2,
    ).fit(spark.createDataFrame(prefs, "u int, i int, r double"))
    item_rows = {r.id: n for n, r in enumerate(model.itemFactors.orderBy("id").collect())}
    item_factors = np.array(
        [r.features for r in model.itemFactors.orderBy("id").collect()], dtype=np.float64
    )
    fitted = {r.id: np.array(r.features) for r in model.userFactors.collect()}
    users = np.array([u for u, _, _ in prefs])
    folded, counted = fold_in(
        users,
        np.array([item_rows[i] for _, i, _ in prefs]),
        np.array([r for _, _, r in prefs]),
        users.max() + 1,
        item_factors,
        settings,
        item_gram=gram(item_factors),
        chunk_pairs=7,  # several chunks: the sum must not depend on them
    )
    cosines = [
        folded[u] @ fitted[u] / (np.linalg.norm(folded[u]) * np.linalg.norm(fitted[u]))
        for u in fitted
    ]
    assert min(cosines) >= 0.999
    assert np.allclose(folded[list(fitted)], np.stack(list(fitted.values())), atol=1e-3)
    assert (counted == 6).all()


def test_a_user_with_no_positive_preference_gets_zeros_and_nonnegative_stays_nonnegative():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5, 3))
    folded, counted = fold_in(
        np.array([0, 1, 1]),
        np.array([0, 1, 2]),
        np.array([-1.0, 2.0, 1.0]),
        2,
        items,
        AlsSettings(reg_param=0.1, alpha=1.0, implicit=True, nonnegative=True),
    )
    assert counted.tolist() == [0, 2]
    assert not folded[0].any()
    assert (folded[1] >= 0).all() and folded[1].any()
