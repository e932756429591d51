"""hybridrec.safety.privacy: keyed pseudonyms of user ids, redaction of rejects.raw, and the key
kept out of plans, config and logs, alone and through the ingest job."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest

from hybridrec.config.loader import load_config
from hybridrec.safety import privacy
from hybridrec.store.tables import Warehouse
from jobs import ingest as ingest_job

KEY = "k3y-that-must-not-leak-7f1c"
OTHER_KEY = "another-key-entirely"


def _plans(df) -> str:
    """Every plan Spark keeps for ``df`` (parsed, analysed, optimised, physical)."""
    return df._jdf.queryExecution().toString()


def test_pseudonym_is_the_keyed_hmac_and_deterministic():
    first = privacy.pseudonym("U1", KEY.encode())

    assert first == hmac.new(KEY.encode(), b"U1", hashlib.sha256).hexdigest()
    assert first == privacy.pseudonym("U1", KEY.encode())
    assert len(first) == 64 and int(first, 16) >= 0
    assert first != privacy.pseudonym("U1", OTHER_KEY.encode())
    assert first != privacy.pseudonym("U2", KEY.encode())


def test_pseudonymise_in_spark_matches_python_and_keeps_null(spark):
    df = spark.createDataFrame(
        [("U1", 1), (None, 2), ("Ü\u00e9 2", 3), ("U1", 4)], "user_id string, n int"
    )

    out = privacy.pseudonymise(df, KEY.encode())
    got = {r["n"]: r["user_id"] for r in out.collect()}

    assert got == {
        1: privacy.pseudonym("U1", KEY.encode()),
        2: None,
        3: privacy.pseudonym("Ü\u00e9 2", KEY.encode()),
        4: privacy.pseudonym("U1", KEY.encode()),
    }


def test_the_key_is_in_no_plan_and_no_spark_setting(spark, capsys):
    df = spark.createDataFrame([("U1",)], "user_id string")
    rejects = spark.createDataFrame([("U1", "U1,x")], "user_id string, raw string")

    out = privacy.pseudonymise(df, KEY.encode())
    redacted = privacy.redact_rejects(rejects, KEY.encode())
    out.explain(mode="extended")
    redacted.explain(mode="formatted")
    out.collect()
    redacted.collect()

    shown = capsys.readouterr().out + _plans(out) + _plans(redacted)
    assert "pseudonymise_user_id" in shown  # the plans were looked at
    assert KEY not in shown
    assert all(KEY not in str(value) for _, value in spark.sparkContext.getConf().getAll())


@pytest.mark.parametrize(
    ("user_id", "raw", "expected"),
    [
        # every standalone occurrence, in any format
        (
            "U1",
            '{"reviewerID": "U1", "asin": "A1", "note": "U1 again"}',
            '{"reviewerID": "{p}", "asin": "A1", "note": "{p} again"}',
        ),
        ("U1", "U1,A1,5,1700000000", "{p},A1,5,1700000000"),
        # not inside a longer id
        ("U1", "U1,U10,xU1,U1_b", "{p},U10,xU1,U1_b"),
        # an id with regex characters and \\E in it is taken literally
        ("a.b\\E(c", "a.b\\E(c,axb\\E(c", "{p},axb\\E(c"),
        # surrounding whitespace as read (reject mode): the id as read is replaced
        (" U3 ", '" U3 ",A1', '"{p}",A1'),
        # no user id could be read: the record may still hold one
        (None, '{"reviewerID": "U9", "asin": "B9", "summ', "<redacted>"),
        ("  ", "  ,A1,5", "<redacted>"),
        # the id does not occur as read (JSON escaped it): nothing can be located
        ('U"1', '{"user_id":"U\\"1"}', "<redacted>"),
    ],
    ids=[
        "json",
        "csv",
        "boundaries",
        "regex chars",
        "whitespace",
        "unparseable",
        "blank",
        "escaped",
    ],
)
def test_redact_rejects(spark, user_id, raw, expected):
    rejects = spark.createDataFrame(
        [(user_id, raw, "why")], "user_id string, raw string, reason string"
    )

    (row,) = privacy.redact_rejects(rejects, KEY.encode()).collect()

    pseudonym = privacy.pseudonym(user_id, KEY.encode()) if user_id is not None else None
    assert row["raw"] == expected.replace("{p}", pseudonym or "")
    assert row["user_id"] == pseudonym
    assert row["reason"] == "why"


def test_read_key_names_the_variable_when_it_is_missing(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)

    with pytest.raises(privacy.MissingKeyError, match=cfg.privacy.key_env):
        privacy.read_key(cfg)

    monkeypatch.setenv(cfg.privacy.key_env, KEY)
    assert privacy.read_key(cfg) == KEY.encode()


# --- through the ingest job --------------------------------------------------------------------

BEHAVIOUR = (
    "customer,sku,action,ts\n"
    "alice,s1,click,1400000000\n"
    "alice,s2,purchase,1400000100\n"
    "bob,s1,click,1400000200\n"
    " carol ,s3,click,1400000300\n"  # whitespace: rejected, raw redacted around the id
    "dave,s4,wishlist,1400000400\n"  # unknown event type: rejected, id replaced in raw
    ",s5,click,1400000500\n"  # no user id: raw redacted whole
    "erin,s6,click,1400000600,extra\n"  # wrong width: id still replaced in raw
)


@pytest.fixture(scope="module")
def private_run(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("private")
    path = folder / "clicks.csv"
    path.write_text(BEHAVIOUR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDREC_PSEUDONYM_KEY", KEY)
        cfg = load_config(
            [],
            [
                f"run.work_dir={folder / 'work'}",
                "source.kind=generic",
                "source.generic.format=csv",
                f"source.generic.behaviour.path={path}",
                "source.generic.behaviour.columns={user_id: customer, item_id: sku, "
                "event_type: action, event_ts: ts}",
                "privacy.pseudonymise_user_ids=true",
            ],
        )
        logger = logging.getLogger()
        records: list[logging.LogRecord] = []
        handler = logging.Handler(level=logging.DEBUG)
        handler.emit = records.append
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        try:
            counts = ingest_job.run(spark, cfg, "run-p")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    warehouse = Warehouse.from_config(spark, cfg, "run-p")
    return counts, warehouse, records, folder


def _p(user_id: str) -> str:
    return privacy.pseudonym(user_id, KEY.encode())


def test_ingest_writes_pseudonyms_only(private_run):
    counts, warehouse, _, _ = private_run

    users = {(r.user_id, r.item_id) for r in warehouse.read("interactions").collect()}

    assert users == {(_p("alice"), "s1"), (_p("alice"), "s2"), (_p("bob"), "s1")}
    assert (counts["behaviour_in"], counts["interactions"], counts["rejects"]) == (7, 3, 4)


def test_ingest_redacts_user_ids_in_rejects(private_run):
    _, warehouse, _, _ = private_run

    rejects = {r.reason: r.raw for r in warehouse.read("rejects").collect()}

    assert rejects == {
        "user_id has surrounding whitespace": f"{_p(' carol ')},s3,click,1400000300",
        "event_type not in ['rating', 'review', 'click', 'purchase']": (
            f"{_p('dave')},s4,wishlist,1400000400"
        ),
        "missing user_id": "<redacted>",
        "wrong number of fields": f"{_p('erin')},s6,click,1400000600,extra",
    }


def test_ingest_leaks_neither_key_nor_raw_ids(private_run):
    _, warehouse, records, folder = private_run

    logged = "\n".join(record.getMessage() for record in records)
    stored = [
        str(value)
        for table in ("interactions", "rejects", "items")
        for row in warehouse.read(table).collect()
        for value in row
    ]

    assert "row accounting ok" in logged  # the job's log lines were captured
    assert KEY not in logged
    assert not any(KEY in value for value in stored)
    for name in ("alice", "bob", "carol", "dave", "erin"):
        assert not any(name in value for value in stored), name
    # The key is in no file the run wrote (tables, catalog, checkpoints).
    for path in folder.joinpath("work").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
