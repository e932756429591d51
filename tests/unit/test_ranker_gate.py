"""The learned ranker's Spark side without a pipeline: the gate's rule and the items' context."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import numpy as np
import pytest
import xgboost

from hybridrec.config.loader import load_config
from hybridrec.constants import ITEM_COL, SPLIT_COL, TS_COL, USER_COL
from hybridrec.ranking import blocks, learned, ranker_fit
from udfs.ranking_kernel import ItemCatalog

GAIN = {"ranker": 0.31, "linear": 0.30, "gain": 0.01, "se": 0.004}


def test_the_ranker_is_served_only_where_the_gains_interval_clears_zero():
    served, low, note = ranker_fit.decide(GAIN, 0.95, 10, "auto")
    assert served and low == pytest.approx(0.01 - 1.959964 * 0.004)
    assert note.startswith("ranker served") and "+0.0100" in note
    weak = {**GAIN, "se": 0.006}  # the same gain, noisier: its interval spans zero
    served, low, note = ranker_fit.decide(weak, 0.95, 10, "auto")
    assert not served and low < 0
    assert note.startswith("linear hybrid served") and "<= 0" in note
    # Confidence 0: any gain above zero serves it.
    assert ranker_fit.decide(weak, 0.0, 10, "auto")[0]
    assert not ranker_fit.decide({**GAIN, "gain": -0.001}, 0.0, 10, "auto")[0]


def test_serve_always_serves_a_losing_ranker_and_says_so():
    served, _, note = ranker_fit.decide({**GAIN, "gain": -0.02}, 0.95, 10, "always")
    assert served
    assert "ranker.serve is always" in note and "-0.0200" in note


def test_item_context_is_each_items_age_and_trend_in_the_folds_history(spark):
    now = datetime(2026, 6, 30)
    rows = [
        # item a: first had 100 days before the fold's newest event, 1 of 3 events recent
        ("u1", "a", now - timedelta(days=100), "train"),
        ("u2", "a", now - timedelta(days=50), "train"),
        ("u3", "a", now - timedelta(days=5), "train"),
        # item b: new, its only event the fold's newest
        ("u1", "b", now, "train"),
        # a held-out event is not history: it neither ages c nor moves the clock
        ("u2", "c", now + timedelta(days=30), "validation"),
    ]
    interactions = spark.createDataFrame(rows, [USER_COL, ITEM_COL, TS_COL, SPLIT_COL])
    ids = np.array(["a", "b", "c"])
    catalog = ItemCatalog(
        ids=ids,
        cf=np.zeros((3, 1), np.float32),
        has_cf=np.zeros(3, bool),
        text=np.zeros((3, 1), np.float32),
        has_text=np.zeros(3, bool),
        pop=np.zeros(3, np.float32),
        neighbours=np.full((3, 0), -1),
        neighbour_sims=np.zeros((3, 0), np.float32),
        text_neighbours=np.full((3, 0), -1),
        text_neighbour_sims=np.zeros((3, 0), np.float32),
        next_items=np.full((3, 0), -1),
        next_sims=np.zeros((3, 0), np.float32),
    )
    context = learned.item_context(interactions, catalog, "validation", trend_days=30)
    assert context.age_days[:2] == pytest.approx([100.0, 0.0])
    assert context.trend[:2] == pytest.approx([1 / 3, 1.0])
    assert np.isnan(context.age_days[2]) and np.isnan(context.trend[2])
    # The clock is the newest history event (timestamps are read as UTC epoch seconds).
    newest = spark.createDataFrame([(now,)], ["t"]).selectExpr("cast(t as double)").first()[0]
    assert context.reference_ts == pytest.approx(newest)


def test_depths_fitted_side_by_side_are_the_fits_made_one_after_the_other(spark, monkeypatch):
    rng = np.random.default_rng(3)
    queries, per_query = 60, 12
    features = rng.normal(size=(queries * per_query, len(ranker_fit.FEATURE_COLUMNS)))
    label = np.zeros(queries * per_query, np.float32)
    # The relevant item of each query is the one with the highest first two features.
    signal = (features[:, 0] + features[:, 1]).reshape(queries, per_query)
    label[np.arange(queries) * per_query + signal.argmax(axis=1)] = 1.0
    qid = np.repeat(np.arange(queries), per_query)
    rows = spark.createDataFrame(
        [
            (
                int(q),
                float(y),
                0.0,
                bool(q % 4 == 0),
                *map(float, x),
            )
            for q, y, x in zip(qid, label, features, strict=True)
        ],
        ", ".join(
            [
                f"{ranker_fit.QID} long",
                f"{ranker_fit.LABEL} float",
                f"{ranker_fit.BASE_MARGIN} float",
                f"{ranker_fit.HELD_BACK} boolean",
                *(f"`{c}` float" for c in ranker_fit.FEATURE_COLUMNS),
            ]
        ),
    ).cache()
    cfg = load_config([], ["ranker.max_depth_grid=[2, 3]", "ranker.max_rounds=15"])
    threads = []
    fit = ranker_fit._fit

    def traced(rows, cfg, depth):
        threads.append(threading.current_thread().name)
        return fit(rows, cfg, depth)

    monkeypatch.setattr(ranker_fit, "_fit", traced)
    clock = blocks.boosting_clock(spark)
    before = clock.value
    together = ranker_fit._fit_depths(rows, cfg)
    assert all(name.startswith("ranker-fit") for name in threads), threads  # 2 task slots
    # The boosting rounds were timed in the training tasks and came back to the driver.
    boosted = clock.value - before
    alone = [fit(rows, cfg, depth) for depth in (2, 3)]
    assert boosted > 0 and clock.value - before > boosted
    x = xgboost.DMatrix(features[:50].astype(np.float32), feature_names=None)
    for (booster, score, rounds), (booster_alone, score_alone, rounds_alone) in zip(
        together, alone, strict=True
    ):
        assert (rounds, score) == (rounds_alone, score_alone)
        np.testing.assert_array_equal(
            booster.predict(x, validate_features=False),
            booster_alone.predict(x, validate_features=False),
        )
    rows.unpersist()
