"""Topics, their names and coherence, users' interests, the sentiment that stands in for a
missing rating, and the next-item check (hybridrec.models.topics and interests,
udfs.sentiment)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.models import interests as interest_model
from hybridrec.models import topics
from hybridrec.models.folds import history
from udfs import sentiment

NOW = datetime(2026, 11, 30, 12, 0, 0)
INTERACTIONS = (
    "user_id string, item_id string, rating double, event_ts timestamp, review_text string, "
    "split string"
)


def _cfg(*overrides: str):
    return load_config([], ["topics.min_doc_freq=1", "topics.top_words=4", *overrides])


def _vectors(spark, clusters: int, per_cluster: int, dim: int = 8, seed: int = 0):
    """Unit vectors in ``clusters`` tight groups around orthogonal directions."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(clusters):
        for i in range(per_cluster):
            v = np.eye(dim)[c] + rng.normal(0, 0.05, dim)
            rows.append((f"c{c}_{i}", (v / np.linalg.norm(v)).tolist()))
    df = spark.createDataFrame(rows, "id string, embedding array<float>")
    return df.withColumn("fold", F.lit("test"))


def test_the_silhouette_picks_the_number_of_groups_the_vectors_have(spark):
    cfg = _cfg("topics.k_grid=[2,3,5]")
    vectors = topics.served_item_vectors(_vectors(spark, 3, 12))

    fitted = topics.fit(vectors, cfg)

    assert fitted.k == 3
    assert set(fitted.silhouettes) == {2, 3, 5}
    assert fitted.silhouettes[3] > fitted.silhouettes[2] and fitted.silhouettes[3] > 0.8
    assigned = topics.item_topics(vectors, fitted).toPandas()
    # Every group is one topic, and each item lies near its topic's centre.
    groups = assigned.assign(group=assigned["item_id"].str[:2]).groupby("group")["topic_id"]
    assert (groups.nunique() == 1).all() and groups.first().nunique() == 3
    assert assigned["similarity"].min() > 0.95


def test_a_set_k_is_used_as_given_and_kept_below_the_item_count(spark):
    vectors = topics.served_item_vectors(_vectors(spark, 2, 2))
    assert topics.candidate_ks(_cfg("topics.k=2"), 4) == [2]
    assert topics.candidate_ks(_cfg("topics.k=9"), 4) == [3]
    assert topics.candidate_ks(_cfg("topics.k_grid=[8,12]"), 6) == [3]
    with pytest.raises(topics.TooFewItems, match="at least 3 items"):
        topics.candidate_ks(_cfg(), 2)
    assert topics.fit(vectors, _cfg("topics.k=2")).silhouettes == {}


def test_weighting_by_events_draws_a_topic_s_centre_to_what_users_had(spark):
    rng = np.random.default_rng(1)
    rows = []
    for group in range(2):  # two groups of ten, loosely around orthogonal directions
        for i in range(10):
            v = np.eye(8)[group] + rng.normal(0, 0.15, 8)
            rows.append((f"g{group}_{i}", (v / np.linalg.norm(v)).tolist()))
    vectors = topics.served_item_vectors(
        spark.createDataFrame(rows, "id string, embedding array<float>").withColumn(
            "fold", F.lit("test")
        )
    )
    had = spark.createDataFrame([("g0_3",)] * 20 + [("g1_1",)], "item_id string")

    def similarity(weighting: str) -> pd.Series:
        cfg = _cfg("topics.k=2", f"topics.item_weight={weighting}")
        weighted = topics.weighted(vectors, had, cfg)
        assigned = topics.item_topics(weighted, topics.fit(weighted, cfg)).toPandas()
        assert assigned.groupby(assigned["item_id"].str[:2])["topic_id"].nunique().max() == 1
        return assigned.set_index("item_id")["similarity"]

    weights = topics.weighted(vectors, had, _cfg("topics.item_weight=events")).toPandas()
    assert weights.set_index("item_id")["weight"][["g0_3", "g1_1", "g1_2"]].tolist() == [
        21.0,
        2.0,
        1.0,
    ]
    uniform, events = similarity("uniform"), similarity("events")
    # The same two topics; the much-had item's now lies nearly on its centre, the others less.
    assert uniform["g0_3"] < 0.9 < 0.95 < events["g0_3"]
    assert (events.drop("g0_3").filter(like="g0_") < uniform.filter(like="g0_").drop("g0_3")).all()


def _documents(spark):
    music = ["guitar drum melody great", "melody guitar chords", "drum kit great", "guitar great"]
    camping = ["tent trail canteen great", "trail tent boots", "canteen trail water great"]
    rows = [(i, 0, t) for i, t in enumerate(music)]
    rows += [(100 + i, 1, t) for i, t in enumerate(camping)]
    return spark.createDataFrame(rows, "text_id long, topic_id int, text string")


def test_topics_are_named_by_their_distinctive_words_not_the_shared_ones(spark):
    cfg = _cfg()
    words = topics.tokenised(_documents(spark), cfg)
    vocab = topics.vocabulary(words, cfg)
    top = topics.topic_words(words, vocab, cfg)

    named = topics.labels(top, 2, 3)
    assert set(named[0].split(", ")) <= {"guitar", "drum", "melody", "chords"}
    assert set(named[1].split(", ")) <= {"tent", "trail", "canteen", "boots", "water"}
    # "great" is in both topics: the class-based IDF ranks it below every distinctive word.
    for _, words_of in top.groupby("topic_id"):
        ranked = list(words_of.sort_values("rank")["word"])
        assert "great" not in ranked or ranked.index("great") == len(ranked) - 1
    assert topics.labels(top, 3, 3)[2] == "topic 2"  # a topic with no word keeps its number


def test_stop_words_short_tokens_and_contractions_name_nothing(spark):
    cfg = _cfg("topics.min_word_length=3")
    docs = spark.createDataFrame(
        [(1, 0, "The saddle is on it, don't ride at 42 km/h! Saddle.")],
        "text_id long, topic_id int, text string",
    )
    words = topics.tokenised(docs, cfg).first()["words"]
    assert words == ["saddle", "ride", "saddle"]


def test_npmi_is_one_for_words_always_together_and_minus_one_for_never():
    doc_freq = {"a": 10, "b": 10, "c": 10, "d": 50}
    pairs = {("a", "b"): 10, ("a", "d"): 5}
    assert topics.npmi_of(["a", "b"], doc_freq, pairs, 100) == pytest.approx(1.0)
    assert topics.npmi_of(["a", "c"], doc_freq, pairs, 100) == -1.0
    # p(a, d) = p(a) p(d): independent words score 0.
    assert topics.npmi_of(["a", "d"], doc_freq, pairs, 100) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(topics.npmi_of(["a"], doc_freq, pairs, 100))


def test_topic_words_cohere_more_than_random_sets_of_the_same_words(spark):
    cfg = _cfg("topics.coherence_random_sets=20", "topics.top_words=3")
    words = topics.tokenised(_documents(spark), cfg)
    top = topics.topic_words(words, topics.vocabulary(words, cfg), cfg)

    scores = topics.coherence(words, top, cfg)

    assert scores.texts == 7
    assert len(scores.random_sets) == 20
    assert scores.mean > scores.random_mean


def _interactions(spark, rows):
    return spark.createDataFrame(rows, INTERACTIONS)


def _history_of(interactions):
    """The served fold's history, as the topics job passes it."""
    return history(interactions, "test")


def _history(spark, rows):
    return _history_of(_interactions(spark, rows))


def _assigned(spark, mapping: dict[str, int]):
    return spark.createDataFrame(
        [(i, t, 1.0) for i, t in mapping.items()], "item_id string, topic_id int, similarity float"
    )


NAMED = {0: "music", 1: "camping", 2: "cooking"}


def test_interests_are_the_rated_shares_of_the_history_with_tags_and_the_recent_shift(spark):
    cfg = _cfg("topics.interests_top=2", "topics.recent_days=30")
    old = NOW - timedelta(days=200)
    rows = [
        ("u1", "m1", 5.0, old, None, "train"),
        ("u1", "m2", 5.0, old + timedelta(days=1), None, "train"),
        ("u1", "m3", 5.0, old + timedelta(days=2), None, "validation"),
        ("u1", "c1", 5.0, NOW - timedelta(days=1), None, "validation"),
        ("u1", "k1", 4.0, NOW, None, "test"),  # the next item: not history
        ("u2", "c1", 1.0, old, None, "train"),
        ("u2", "c2", 1.0, old, None, "validation"),
        ("u2", "k1", 5.0, old, None, "test"),
    ]
    assigned = _assigned(spark, {"m1": 0, "m2": 0, "m3": 0, "c1": 1, "c2": 1, "k1": 2})

    got = {
        r.user_id: r
        for r in interest_model.user_interests(
            _history(spark, rows), assigned, NAMED, cfg
        ).collect()
    }

    u1 = got["u1"]
    assert u1.events == 4
    assert u1.topic_ids == [0, 1] and u1.shares == pytest.approx([0.75, 0.25])
    assert (u1.top_topic_id, u1.top_tag, u1.top_share) == (0, "music", pytest.approx(0.75))
    assert u1.tags == ["music", "camping"] and u1.tag_topic_ids == [0, 1]
    # Its last 30 days are all camping, what came before all music.
    assert (u1.recent_events, u1.earlier_events) == (1, 3)
    assert u1.shift == pytest.approx(1.0)
    assert (u1.rising_topic_id, u1.rising_tag) == (1, "camping")
    u2 = got["u2"]
    assert u2.tags == ["camping"] and u2.shares == [1.0]
    assert u2.shift is None and u2.rising_tag is None  # nothing recent to compare


def test_a_tie_goes_to_the_more_popular_topic(spark):
    cfg = _cfg("topics.interests_top=1")
    rows = [("u1", "m1", 3.0, NOW, None, "train"), ("u1", "c1", 3.0, NOW, None, "train")]
    rows += [(f"v{i}", "c1", 3.0, NOW, None, "train") for i in range(3)]
    assigned = _assigned(spark, {"m1": 0, "c1": 1})

    interests = interest_model.user_interests(_history(spark, rows), assigned, NAMED, cfg)

    assert interests.where("user_id = 'u1'").first().tags == ["camping"]


def test_the_reviews_sentiment_stands_in_for_a_missing_rating(spark):
    rows = [
        ("u1", "m1", None, NOW, "I love it, wonderful and beautiful sound", "train"),
        ("u1", "c1", None, NOW, "Terrible, awful, it broke. I hate it", "train"),
        ("u1", "k1", None, NOW, None, "train"),  # no text, no rating: the scale's middle
    ]
    assigned = _assigned(spark, {"m1": 0, "c1": 1, "k1": 2})

    felt = interest_model.user_interests(_history(spark, rows), assigned, NAMED, _cfg()).first()
    flat = interest_model.user_interests(
        _history(spark, rows), assigned, NAMED, _cfg("topics.sentiment=none")
    ).first()

    shares = dict(zip(felt.topic_ids, felt.shares, strict=True))
    assert shares[0] > shares[2] > shares[1]
    assert flat.shares == pytest.approx([1 / 3] * 3)


def test_vader_scores_polarity_and_leaves_blank_texts_unscored():
    scores = sentiment.compound_scores(
        pd.Series(["Great, I love it!", "Awful. Broken.", " ", None])
    )
    assert scores[0] > sentiment.POSITIVE and scores[1] < sentiment.NEGATIVE
    assert scores[2:].isna().all()
    assert sentiment.as_rating(1.0, 1, 5) == 5 and sentiment.as_rating(-1.0, 1, 5) == 1


def test_sentiment_agreement_counts_polar_reviews_whose_sign_matches_the_stars(spark):
    rows = [
        ("u1", "a", 5.0, NOW, "I love it, great", "train"),
        ("u2", "a", 1.0, NOW, "Awful, I hate it", "train"),
        ("u3", "a", 1.0, NOW, "Wonderful, the best", "train"),  # disagrees
        ("u4", "a", 3.0, NOW, "It is fine", "train"),  # not polar
        ("u5", "a", None, NOW, "Great", "train"),  # no stars: not checked
    ]
    got = interest_model.sentiment_agreement(_interactions(spark, rows), _cfg())
    assert got["sentiment_checked"] == 4
    assert got["sentiment_polar_agreement"] == pytest.approx(2 / 3)


def test_the_next_item_check_pairs_the_tags_with_as_many_popular_topics(spark):
    rows = [
        # Topic 0 is the most popular; u1 and u2 are into topic 1, and their next item is in it.
        *[(f"p{i}", "m1", 3.0, NOW, None, "train") for i in range(5)],
        ("u1", "c1", 3.0, NOW, None, "train"),
        ("u1", "c2", 3.0, NOW, None, "test"),
        ("u2", "c1", 3.0, NOW, None, "train"),
        ("u2", "c2", 3.0, NOW, None, "test"),
        ("u3", "m1", 3.0, NOW, None, "train"),
        ("u3", "c2", 3.0, NOW, None, "test"),
        # Two tags: compared with the two most popular topics, which hold its next item too.
        ("u4", "m1", 3.0, NOW, None, "train"),
        ("u4", "c1", 3.0, NOW, None, "train"),
        ("u4", "c2", 3.0, NOW, None, "test"),
    ]
    interactions = _interactions(spark, rows)
    assigned = _assigned(spark, {"m1": 0, "c1": 1, "c2": 1})
    interests = interest_model.user_interests(_history_of(interactions), assigned, NAMED, _cfg())

    hits = interest_model.next_item_hits(interactions, assigned, interests, 0.95)

    assert hits.users == 4
    assert hits.interests == pytest.approx(3 / 4) and hits.prior == pytest.approx(1 / 4)
    assert hits.low < 1 / 2 < hits.high
