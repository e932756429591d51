"""The folds: what each learns from and is judged on, which are fitted, and pooled tuning."""

from __future__ import annotations

import pandas as pd
import pytest

from hybridrec.config.loader import load_config
from hybridrec.constants import EARLY, TEST, TRAIN, VALIDATION
from hybridrec.models import folds
from hybridrec.ranking.rank import pooled_summaries

# user, item, event_ts, split
ROWS = [
    ("u1", "a", 1, TRAIN),
    ("u1", "b", 5, TRAIN),
    ("u1", "b", 2, TRAIN),  # an earlier event of the same pair: it goes where the pair goes
    ("u1", "c", 5, TRAIN),  # the same newest time as b: the higher id is newer, as at ingest
    ("u1", "d", 6, VALIDATION),
    ("u1", "e", 7, TEST),
    ("u2", "a", 1, TRAIN),  # one train item: it stays in train, u2 has no early item
    ("u2", "b", 2, VALIDATION),
    ("u2", "c", 3, TEST),
    ("u3", "a", 3, TRAIN),
    ("u3", "b", 2, TRAIN),
]


def _interactions(spark):
    return spark.createDataFrame(
        ROWS, "user_id string, item_id string, event_ts long, split string"
    )


def _pairs(df) -> set[tuple[str, str]]:
    return {(r.user_id, r.item_id) for r in df.select("user_id", "item_id").distinct().collect()}


def test_the_early_fold_holds_out_each_users_newest_train_item(spark):
    interactions = _interactions(spark)
    assert _pairs(folds.held_out(interactions, EARLY)) == {("u1", "c"), ("u3", "a")}
    assert _pairs(folds.history(interactions, EARLY)) == {
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u3", "b"),
    }
    assert folds.history(interactions, EARLY).count() == 5  # both of (u1, b)'s events


def test_the_other_folds_see_the_early_item_as_train(spark):
    interactions = _interactions(spark)
    validation = _pairs(folds.history(interactions, VALIDATION))
    assert {("u1", "c"), ("u3", "a")} <= validation
    assert _pairs(folds.held_out(interactions, VALIDATION)) == {("u1", "d"), ("u2", "b")}
    assert ("u1", "d") in _pairs(folds.history(interactions, TEST))
    with pytest.raises(ValueError, match="unknown fold"):
        folds.history(interactions, "train")


@pytest.mark.parametrize(
    ("setting", "below", "max_users", "expected"),
    [
        ("auto", 3, 100, (EARLY, VALIDATION, TEST)),  # 2 validation users: fewer than 3
        ("auto", 2, 100, (VALIDATION, TEST)),
        ("auto", 100, 2, (VALIDATION, TEST)),  # the tuning sample holds them all already
        ("always", 2, 2, (EARLY, VALIDATION, TEST)),
        ("never", 3, 100, (VALIDATION, TEST)),
    ],
)
def test_the_early_fold_is_fitted_where_validation_has_few_users(
    spark, tmp_path, setting, below, max_users, expected
):
    cfg = load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            f"score.early_target={setting}",
            f"score.early_target_below={below}",
            f"score.tune_max_users={max_users}",
        ],
    )
    assert folds.model_folds(_interactions(spark), cfg) == expected


def test_no_early_fold_without_tuning(spark, tmp_path):
    cfg = load_config(
        [],
        [f"run.work_dir={tmp_path}", "score.early_target=always", "score.tune_on_validation=false"],
    )
    assert folds.model_folds(_interactions(spark), cfg) == (VALIDATION, TEST)


def _summary(users: int, ndcg: list[float], se: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "combo": range(len(ndcg)),
            "ndcg": ndcg,
            "hr": [2 * n for n in ndcg],
            "users": users,
            "ndcg_gain": [n - ndcg[0] for n in ndcg],
            "ndcg_gain_se": se,
        }
    )


def test_pooled_summaries_weigh_each_fold_by_its_users():
    validation = _summary(100, [0.30, 0.36], [0.0, 0.02])
    early = _summary(300, [0.20, 0.20], [0.0, 0.01])
    pooled = pooled_summaries([validation, early])
    assert list(pooled.columns) == list(validation.columns)
    assert pooled["users"].tolist() == [400, 400]
    assert pooled["ndcg"].tolist() == pytest.approx([0.225, 0.24])
    assert pooled["hr"].tolist() == pytest.approx([0.45, 0.48])
    assert pooled["ndcg_gain"].tolist() == pytest.approx([0.0, 0.015])
    # the folds' variances of the mean add: (100 * 0.02)^2 + (300 * 0.01)^2 = 13, over 400
    assert pooled["ndcg_gain_se"].tolist() == pytest.approx([0.0, 13**0.5 / 400])


def test_a_fold_without_users_leaves_the_other_as_it_is():
    validation = _summary(100, [0.30, 0.36], [0.0, 0.02])
    pooled = pooled_summaries([validation, validation.iloc[0:0]])
    pd.testing.assert_frame_equal(pooled, validation, check_dtype=False)
