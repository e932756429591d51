"""The weight grid is scored on at most about ``score.tune_max_users`` validation users: a hash
sample that keeps the same users every time and all of them below the cap."""

from __future__ import annotations

from hybridrec.ranking.scoring import tuning_sample


def test_above_the_cap_a_stable_sample_of_about_that_size(spark):
    users = spark.range(20_000).selectExpr("concat('u', id) as user_id", "id % 7 as target")
    kept = tuning_sample(users, 2_000)
    ids = {r.user_id for r in kept.collect()}
    assert 1_700 <= len(ids) <= 2_300
    assert ids == {r.user_id for r in tuning_sample(users, 2_000).collect()}
    # The same share of half the users keeps the same users: a hash of the id, not a position.
    fewer = users.where("id % 2 = 0")
    half = {r.user_id for r in tuning_sample(fewer, 1_000).collect()}
    assert half and half <= ids
    assert set(kept.columns) == {"user_id", "target"}


def test_at_or_below_the_cap_every_user(spark):
    users = spark.range(500).selectExpr("concat('u', id) as user_id")
    assert tuning_sample(users, 500).count() == 500
