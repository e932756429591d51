"""hybridrec.ingest: timestamp parsing, validation reasons, behaviour/review join, split."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec import ingest
from hybridrec.config.loader import load_config
from hybridrec.constants import TEST, TRAIN, VALIDATION
from hybridrec.sources import BEHAVIOUR_SCHEMA, ITEM_SCHEMA, REVIEW_SCHEMA, frame_to_raw

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
LATEST = datetime(2026, 1, 1, tzinfo=timezone.utc)  # what the job passes: its start + 1 day
EVENT_TYPES = "['rating', 'review', 'click', 'purchase']"


def _behaviour(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    columns = ["user_id", "item_id", "rating", "event_type", "event_ts"]
    return frame_to_raw(
        spark, pd.DataFrame(rows, columns=columns), BEHAVIOUR_SCHEMA, "behaviour:test"
    )


def _reviews(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    columns = ["user_id", "item_id", "rating", "summary", "review_text", "event_ts"]
    return frame_to_raw(spark, pd.DataFrame(rows, columns=columns), REVIEW_SCHEMA, "reviews:test")


# --- parse_event_ts --------------------------------------------------------------------------


def test_parse_event_ts_reads_seconds_millis_and_iso(spark):
    raw = [
        ("seconds", "1700000000"),
        ("padded seconds", " 86400 "),
        ("millis", "1700000000123"),
        ("iso with zone", "2024-01-02T03:04:05Z"),
        ("iso without time", "2024-01-02"),
        ("garbage", "garbage"),
        ("empty", ""),
        ("impossible date", "2024-13-45"),
        ("time without a date", "12:00"),
        ("year and month only", "2024-05"),
        ("year -1000", "-1000-01-01T00:00:00Z"),
        ("null", None),
    ]
    df = spark.createDataFrame(raw, "case string, event_ts string")

    parsed = dict(
        df.select("case", F.unix_micros(ingest.parse_event_ts(F.col("event_ts")))).collect()
    )

    assert parsed == {
        "seconds": 1_700_000_000_000_000,
        "padded seconds": 86_400_000_000,
        "millis": 1_700_000_000_123_000,
        "iso with zone": 1_704_164_645_000_000,
        "iso without time": 1_704_153_600_000_000,
        "garbage": None,
        "empty": None,
        "impossible date": None,
        "time without a date": None,
        "year and month only": None,
        "year -1000": -93_724_128_000_000_000,  # proleptic Gregorian, as ISO says
        "null": None,
    }


# --- validate_behaviour ----------------------------------------------------------------------


BEHAVIOUR_ROWS = [
    ("u1", "i1", 4.0, "rating", str(T0)),  # valid
    ("u1", "i1", 4.0, "rating", str(T0)),  # exact repeat of the row above
    ("u2", "i1", None, "click", str(T0 * 1000 + 5)),  # valid, epoch millis
    (None, "i2", None, "click", str(T0)),
    ("  ", "i2", None, "click", str(T0)),
    ("u3", None, None, "click", str(T0)),
    ("u3", "i3", None, "click", "yesterday"),
    ("u3", "i4", 6.0, "rating", str(T0)),
    ("u3", "i5", 0.5, "rating", str(T0)),
    ("u3", "i6", None, "view", str(T0)),
    ("u3", "i7", None, None, str(T0)),
    ("u3", "i8", None, "rating", str(T0)),
    (None, None, None, "click", None),
]


@pytest.fixture(scope="module")
def validated_behaviour(spark, cfg):
    raw = _behaviour(spark, BEHAVIOUR_ROWS).cache()
    result = ingest.validate_behaviour(raw, cfg, "run-1", latest_event_ts=LATEST)
    return raw.collect(), result.valid.collect(), result.rejects.collect()


def test_validate_behaviour_gives_each_reject_its_reason(validated_behaviour):
    _, _, rejects = validated_behaviour

    assert Counter(r["reason"] for r in rejects) == Counter(
        {
            "missing user_id": 2,
            "missing item_id": 1,
            "invalid event_ts": 1,
            "rating outside [1.0, 5.0]": 2,
            f"event_type not in {EVENT_TYPES}": 2,
            "rating event without rating": 1,
            "duplicate row": 1,
            "unparseable record": 1,
        }
    )


def test_validate_behaviour_reason_belongs_to_the_right_row(validated_behaviour):
    _, _, rejects = validated_behaviour
    by_item = {}
    for row in rejects:
        item = json.loads(row["raw"]).get("item_id")
        by_item.setdefault(item, set()).add(row["reason"])

    assert by_item["i3"] == {"invalid event_ts"}
    assert by_item["i4"] == {"rating outside [1.0, 5.0]"}
    assert by_item["i5"] == {"rating outside [1.0, 5.0]"}
    assert by_item["i6"] == {f"event_type not in {EVENT_TYPES}"}
    assert by_item["i7"] == {f"event_type not in {EVENT_TYPES}"}
    assert by_item["i8"] == {"rating event without rating"}
    assert by_item["i1"] == {"duplicate row"}
    assert by_item["i2"] == {"missing user_id"}


def test_validate_behaviour_keeps_valid_rows_with_parsed_ts(validated_behaviour):
    _, valid, _ = validated_behaviour

    kept = sorted((r["user_id"], r["item_id"], r["event_type"], r["rating"]) for r in valid)
    assert kept == [("u1", "i1", "rating", 4.0), ("u2", "i1", "click", None)]
    assert all(r["_ts"] is not None for r in valid)


def test_validate_behaviour_rejects_carry_source_raw_and_run_id(validated_behaviour):
    _, _, rejects = validated_behaviour

    assert {r["source"] for r in rejects} == {"behaviour:test"}
    assert {r["run_id"] for r in rejects} == {"run-1"}
    assert all(r["raw"].startswith("{") for r in rejects)


def test_validate_behaviour_puts_every_row_in_exactly_one_place(validated_behaviour):
    raw, valid, rejects = validated_behaviour

    assert len(valid) + len(rejects) == len(BEHAVIOUR_ROWS)
    assert Counter(r["raw"] for r in valid) + Counter(r["raw"] for r in rejects) == Counter(
        r["raw"] for r in raw
    )


def test_validate_reviews_accepts_a_review_without_rating(spark, cfg):
    raw = _reviews(
        spark,
        [
            ("u1", "i1", None, "Nice", "Works", str(T0)),
            ("u1", "i2", 9.0, "Wow", "Too good", str(T0)),
            ("u1", "i3", 3.0, "Hm", "Late", "not a time"),
        ],
    )

    result = ingest.validate_reviews(raw, cfg, "run-1", latest_event_ts=LATEST)

    assert [r["item_id"] for r in result.valid.collect()] == ["i1"]
    assert sorted(r["reason"] for r in result.rejects.collect()) == [
        "invalid event_ts",
        "rating outside [1.0, 5.0]",
    ]


# --- untrusted input: encoding, ids, time bounds, ratings -----------------------------------

MIN_TS = "1990-01-01T00:00:00Z"  # ingest.min_event_ts's default
AFTER = "event_ts after 2026-01-01T00:00:00Z"
BEFORE = f"event_ts before {MIN_TS}"


def _reasons(result: ingest.Validated) -> dict[str, str | None]:
    """item_id (or the raw record when it has none) -> its reason; None for a valid row."""
    out = {r["item_id"]: None for r in result.valid.collect()}
    for r in result.rejects.collect():
        out[json.loads(r["raw"]).get("item_id") or r["raw"]] = r["reason"]
    return out


def test_untrusted_behaviour_rows_get_their_reasons(spark, cfg):
    rows = [
        ("u1", "ok", 4.0, "rating", str(T0)),
        ("u\ufffd1", "fffd-in-user", None, "click", str(T0)),
        (" U003 ", "space-around-user", None, "click", str(T0)),
        ("U003\t", "tab-after-user", None, "click", str(T0)),
        ("\u00a0U003", "nbsp-before-user", None, "click", str(T0)),
        ("u1", " item-space ", None, "click", str(T0)),
        ("u\x001", "nul-in-user", None, "click", str(T0)),
        ("u1", "esc\x1bin-item", None, "click", str(T0)),
        ("u1", "year-3000", None, "click", "3000-01-01T00:00:00Z"),
        ("u1", "year-3000-seconds", None, "click", "32503680000"),
        ("u1", "year-minus-1000", None, "click", "-1000-01-01T00:00:00Z"),
        ("u1", "epoch-0", None, "click", "0"),
        ("u1", "just-before-min", None, "click", "1989-12-31T23:59:59Z"),
        ("u1", "exactly-min", None, "click", MIN_TS),
        ("u1", "exactly-latest", None, "click", "2026-01-01T00:00:00Z"),
        ("u1", "just-after-latest", None, "click", "2026-01-01T00:00:01Z"),
        ("u1", "rating-without-rating", None, "rating", str(T0)),
        ("u\ufffd1", None, None, "click", "3000-01-01"),  # bad bytes come first
    ]

    reasons = _reasons(
        ingest.validate_behaviour(_behaviour(spark, rows), cfg, "r", latest_event_ts=LATEST)
    )

    bad_bytes_raw = next(k for k, v in reasons.items() if k.startswith("{"))
    assert reasons == {
        "ok": None,
        "fffd-in-user": "invalid encoding",
        "space-around-user": "user_id has surrounding whitespace",
        "tab-after-user": "user_id has surrounding whitespace",
        "nbsp-before-user": "user_id has surrounding whitespace",
        " item-space ": "item_id has surrounding whitespace",
        "nul-in-user": "user_id has control characters",
        "esc\x1bin-item": "item_id has control characters",
        "year-3000": AFTER,
        "year-3000-seconds": AFTER,
        "year-minus-1000": BEFORE,
        "epoch-0": BEFORE,
        "just-before-min": BEFORE,
        "exactly-min": None,
        "exactly-latest": None,
        "just-after-latest": AFTER,
        "rating-without-rating": "rating event without rating",
        bad_bytes_raw: "invalid encoding",
    }


def test_invalid_utf8_bytes_are_rejected_and_raw_stays_readable(spark, cfg):
    # Parquet and Spark's text reader keep bad bytes as they are (no U+FFFD): 55 FF 31 = "U\xff1".
    raw = _behaviour(
        spark, [("placeholder", "i1", None, "click", str(T0)), ("u2", "i2", None, "click", str(T0))]
    ).withColumn(
        "user_id",
        F.when(F.col("item_id") == "i1", F.unhex(F.lit("55FF31")).cast("string")).otherwise(
            F.col("user_id")
        ),
    )
    raw = raw.withColumn("raw", F.concat(F.col("user_id"), F.lit(",i1")))

    result = ingest.validate_behaviour(raw, cfg, "r", latest_event_ts=LATEST)
    (reject,) = result.rejects.collect()

    assert [r["item_id"] for r in result.valid.collect()] == ["i2"]
    assert reject["reason"] == "invalid encoding"
    # Stored as valid UTF-8: the bad byte shows as U+FFFD, the rest as read.
    assert reject["raw"] == "U\ufffd1,i1"


def test_invalid_encoding_in_review_text_is_rejected(spark, cfg):
    rows = [
        ("u1", "i1", 4.0, "Fine", "caf\ufffd au lait", str(T0)),
        ("u1", "i2", 4.0, "Fine", "caf\u00e9 au lait", str(T0)),
    ]

    result = ingest.validate_reviews(_reviews(spark, rows), cfg, "r", latest_event_ts=LATEST)

    assert [r["item_id"] for r in result.valid.collect()] == ["i2"]
    assert [r["reason"] for r in result.rejects.collect()] == ["invalid encoding"]


def test_trim_mode_trims_ids_and_keeps_raw_as_read(spark, cfg):
    trim = load_config([], ["ingest.id_whitespace=trim"])
    rows = [
        (" U003 ", "\u3000i1", None, "click", str(T0)),
        ("U003", "i2", None, "click", str(T0)),
        ("  ", "i3", None, "click", str(T0)),  # nothing left: missing
        (" U\x00 ", "i4", None, "click", str(T0)),  # control character inside: still rejected
    ]

    result = ingest.validate_behaviour(_behaviour(spark, rows), trim, "r", latest_event_ts=LATEST)
    valid = sorted((r["user_id"], r["item_id"], r["raw"]) for r in result.valid.collect())

    assert valid == [
        ("U003", "i1", _behaviour(spark, rows[:1]).first()["raw"]),
        ("U003", "i2", _behaviour(spark, rows[1:2]).first()["raw"]),
    ]
    assert sorted(r["reason"] for r in result.rejects.collect()) == [
        "missing user_id",
        "user_id has control characters",
    ]


def test_review_rating_is_required_only_where_reviews_are_the_rating_events(spark, cfg):
    rows = [("u1", "i1", None, "Nice", "Works", str(T0))]

    kept = ingest.validate_reviews(_reviews(spark, rows), cfg, "r", latest_event_ts=LATEST)
    required = ingest.validate_reviews(
        _reviews(spark, rows), cfg, "r", latest_event_ts=LATEST, rating_required=True
    )

    assert (kept.valid.count(), kept.rejects.count()) == (1, 0)
    assert [r["reason"] for r in required.rejects.collect()] == ["rating event without rating"]


def test_the_readers_parse_error_is_the_reason(spark, cfg):
    raw = _reviews(spark, [("u1", "i1", 4.0, None, "x", str(T0))]).withColumn(
        "parse_error", F.lit("wrong number of fields")
    )

    result = ingest.validate_reviews(raw, cfg, "r", latest_event_ts=LATEST)

    assert [r["reason"] for r in result.rejects.collect()] == ["wrong number of fields"]
    assert result.valid.count() == 0


def test_item_ids_are_checked_like_event_ids(spark, cfg):
    items = frame_to_raw(
        spark,
        pd.DataFrame(
            {
                "item_id": ["i1", " i2", "i\x073", "i\ufffd4"],
                "title": ["a", "b", "c", "d"],
                "description": [None, None, None, None],
            }
        ),
        ITEM_SCHEMA,
        "items:test",
    )

    result = ingest.validate_items(items, cfg, "r")

    assert [r["item_id"] for r in result.valid.collect()] == ["i1"]
    assert sorted(r["reason"] for r in result.rejects.collect()) == [
        "invalid encoding",
        "item_id has control characters",
        "item_id has surrounding whitespace",
    ]


# --- review_text and join_interactions -------------------------------------------------------


def test_review_text_joins_summary_and_body(spark):
    df = spark.createDataFrame(
        [
            ("both", "Great", "Loved it"),
            ("trimmed", "  Nice ", "   "),
            ("body only", None, "Just the body"),
            ("neither", " ", None),
        ],
        "case string, summary string, review_text string",
    )

    texts = dict(df.select("case", ingest.review_text(df)).collect())

    assert texts == {
        "both": "Great. Loved it",
        "trimmed": "Nice",
        "body only": "Just the body",
        "neither": None,
    }


@pytest.fixture(scope="module")
def joined(spark, cfg):
    behaviour = _behaviour(
        spark,
        [
            ("u1", "i1", 4.0, "rating", str(T0)),
            ("u2", "i3", None, "click", str(T0 + 30)),
            ("u3", "i4", None, "purchase", str(T0 + 40)),
        ],
    )
    reviews = _reviews(
        spark,
        [
            ("u1", "i1", 4.0, "Great", "Loved it", str(T0 + 10)),
            ("u1", "i2", 2.0, None, "Meh", str(T0 + 20)),
            ("u3", "i4", 5.0, "Solid", None, str(T0 + 50)),
        ],
    )
    b = ingest.validate_behaviour(behaviour, cfg, "run-1", latest_event_ts=LATEST).valid
    r = ingest.validate_reviews(reviews, cfg, "run-1", latest_event_ts=LATEST).valid
    out = ingest.join_interactions(b, r)
    rows = out.select(
        "user_id",
        "item_id",
        "rating",
        "event_type",
        F.unix_timestamp("event_ts").alias("ts"),
        "review_text",
        "origin",
    ).collect()
    return out.columns, {(row["user_id"], row["item_id"]): row.asDict() for row in rows}


def test_join_interactions_has_the_contract_columns(joined):
    columns, _ = joined

    assert columns == [
        "user_id",
        "item_id",
        "rating",
        "event_type",
        "event_ts",
        "review_text",
        "origin",
    ]


def test_join_interactions_attaches_review_to_behaviour_of_same_user_and_item(joined):
    _, rows = joined

    assert rows[("u1", "i1")] == {
        "user_id": "u1",
        "item_id": "i1",
        "rating": 4.0,
        "event_type": "rating",
        "ts": T0,  # the behaviour row's time
        "review_text": "Great. Loved it",
        "origin": "behaviour+review",
    }


def test_join_interactions_takes_the_review_rating_when_behaviour_has_none(joined):
    _, rows = joined

    assert rows[("u3", "i4")]["rating"] == 5.0
    assert rows[("u3", "i4")]["event_type"] == "purchase"
    assert rows[("u3", "i4")]["review_text"] == "Solid"
    assert rows[("u3", "i4")]["origin"] == "behaviour+review"


def test_join_interactions_keeps_review_without_behaviour_as_its_own_row(joined):
    _, rows = joined

    assert rows[("u1", "i2")] == {
        "user_id": "u1",
        "item_id": "i2",
        "rating": 2.0,
        "event_type": "review",
        "ts": T0 + 20,
        "review_text": "Meh",
        "origin": "review",
    }


def test_join_interactions_behaviour_only_row_has_no_text(joined):
    _, rows = joined

    assert rows[("u2", "i3")]["review_text"] is None
    assert rows[("u2", "i3")]["origin"] == "behaviour"
    assert rows[("u2", "i3")]["event_type"] == "click"
    assert len(rows) == 4


def test_join_interactions_pairs_kth_latest_review_with_kth_latest_event(spark, cfg):
    behaviour = _behaviour(
        spark,
        [("u1", "i1", None, "click", str(T0)), ("u1", "i1", None, "purchase", str(T0 + 100))],
    )
    reviews = _reviews(spark, [("u1", "i1", 5.0, None, "Bought it", str(T0 + 200))])
    b = ingest.validate_behaviour(behaviour, cfg, "run-1", latest_event_ts=LATEST).valid
    r = ingest.validate_reviews(reviews, cfg, "run-1", latest_event_ts=LATEST).valid

    rows = ingest.join_interactions(b, r).select("event_type", "review_text", "origin").collect()

    assert sorted(tuple(row) for row in rows) == [
        ("click", None, "behaviour"),
        ("purchase", "Bought it", "behaviour+review"),
    ]


def test_join_interactions_without_reviews_keeps_behaviour(spark, cfg):
    b = ingest.validate_behaviour(
        _behaviour(spark, [("u1", "i1", 3.0, "rating", str(T0))]),
        cfg,
        "run-1",
        latest_event_ts=LATEST,
    ).valid

    rows = ingest.join_interactions(b, None).select("rating", "review_text", "origin").collect()

    assert [tuple(r) for r in rows] == [(3.0, None, "behaviour")]


def test_join_interactions_without_behaviour_keeps_reviews(spark, cfg):
    r = ingest.validate_reviews(
        _reviews(spark, [("u1", "i1", 3.0, "Ok", "Fine", str(T0))]),
        cfg,
        "run-1",
        latest_event_ts=LATEST,
    ).valid

    rows = ingest.join_interactions(None, r).select("event_type", "review_text", "origin").collect()

    assert [tuple(row) for row in rows] == [("review", "Ok. Fine", "review")]


# --- leave_last_out_split --------------------------------------------------------------------


def test_leave_last_out_split(spark):
    events = [
        # u4: four items; a is touched again last, so a (both rows) is the test item.
        ("u4", "a", 1),
        ("u4", "b", 2),
        ("u4", "c", 3),
        ("u4", "d", 4),
        ("u4", "a", 10),
        # u2: two items -> test and train, no validation.
        ("u2", "x", 5),
        ("u2", "y", 6),
        # u1: one item, twice -> both train.
        ("u1", "z", 7),
        ("u1", "z", 8),
    ]
    interactions = spark.createDataFrame(events, "user_id string, item_id string, ts long").select(
        "user_id", "item_id", F.timestamp_seconds("ts").alias("event_ts")
    )

    out = ingest.leave_last_out_split(interactions)
    rows = out.select("user_id", "item_id", F.unix_timestamp("event_ts"), "split").collect()

    assert sorted(tuple(r) for r in rows) == [
        ("u1", "z", 7, TRAIN),
        ("u1", "z", 8, TRAIN),
        ("u2", "x", 5, TRAIN),
        ("u2", "y", 6, TEST),
        ("u4", "a", 1, TEST),
        ("u4", "a", 10, TEST),
        ("u4", "b", 2, TRAIN),
        ("u4", "c", 3, TRAIN),
        ("u4", "d", 4, VALIDATION),
    ]


def test_leave_last_out_split_keeps_every_column(spark):
    interactions = spark.createDataFrame(
        [("u1", "a", 1, "x")], "user_id string, item_id string, event_ts long, origin string"
    ).withColumn("event_ts", F.timestamp_seconds("event_ts"))

    out = ingest.leave_last_out_split(interactions)

    assert out.columns == ["user_id", "item_id", "event_ts", "origin", "split"]
