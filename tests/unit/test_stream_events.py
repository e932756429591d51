"""The stream's events: CSV records from a topic parsed to the landed files' shape, validated by
ingest's own checks, and exact repeats of what was seen dropped."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hybridrec.config.loader import ConfigError, load_config
from hybridrec.streaming import events

LATEST = datetime(2027, 1, 1, tzinfo=timezone.utc)


def _lines(spark, *records):
    return spark.createDataFrame([(r,) for r in records], "value string")


def test_a_topics_records_are_validated_like_landed_rows(spark, cfg):
    raw = events.parse_lines(
        _lines(
            spark,
            "u1,i1,click,2026-11-01T00:00:00Z,,",  # six fields, two of them empty
            'u2,i2,rating,2026-11-01T00:00:00Z,4,"nice, really"',  # a quoted comma
            "u5,i5,click,2026-11-01T00:00:00Z,",  # five: no review column
            "u3,i3",
            "u4,i4,click,2026-11-01T00:00:00Z,,,x",
            ",i6,click,2026-11-01T00:00:00Z,,",
        ),
        "stream:kafka:t",
    )
    checked = events.validate(raw, cfg, "stream-s-000000001", LATEST, None)

    valid = {r.user_id: r for r in checked.valid.collect()}
    assert sorted(valid) == ["u1", "u2", "u5"]
    assert valid["u2"].review_text == "nice, really" and valid["u2"].rating == 4.0
    assert valid["u2"].origin == "behaviour+review" and valid["u1"].origin == "behaviour"
    rejects = {r.raw: r.reason for r in checked.rejects.collect()}
    assert rejects == {
        "u3,i3": "wrong number of fields",
        "u4,i4,click,2026-11-01T00:00:00Z,,,x": "wrong number of fields",
        ",i6,click,2026-11-01T00:00:00Z,,": "missing user_id",
    }
    assert {r.run_id for r in checked.rejects.collect()} == {"stream-s-000000001"}


def test_exact_repeats_of_seen_events_are_dropped_and_nulls_count_as_equal(spark, cfg):
    raw = events.parse_lines(
        _lines(
            spark,
            "u1,i1,click,2026-11-01T00:00:00Z,,",
            "u1,i1,click,2026-11-01T00:00:01Z,,",  # another second: a new event
            'u2,i2,rating,2026-11-01T00:00:00Z,4,"nice"',
            'u2,i2,rating,2026-11-01T00:00:00Z,4,"nicer"',  # another text: a new event
        ),
        "stream:kafka:t",
    )
    fresh = events.validate(raw, cfg, "stream-s-000000002", LATEST, None).valid
    seen = fresh.where("event_ts = '2026-11-01 00:00:00' AND coalesce(review_text, '') <> 'nicer'")

    kept = events.drop_seen(fresh, seen).collect()
    assert sorted((r.user_id, str(r.event_ts), r.review_text) for r in kept) == [
        ("u1", "2026-11-01 00:00:01", None),
        ("u2", "2026-11-01 00:00:00", "nicer"),
    ]


def test_a_kafka_source_needs_its_servers_and_topic():
    with pytest.raises(ConfigError, match="stream.kafka.bootstrap_servers"):
        load_config([], ["stream.source=kafka", "stream.kafka.topic=events"])
