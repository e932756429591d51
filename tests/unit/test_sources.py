"""hybridrec.sources: the generic column mapping, the MovieLens and Amazon readers, and the Amazon
files end to end through the ingest job (row accounting and reject reasons)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pyspark.sql import DataFrame

from hybridrec.config.loader import load_config
from hybridrec.sources import BEHAVIOUR_SCHEMA, REVIEW_SCHEMA, amazon, movielens
from hybridrec.sources.generic import ERROR_COL, RAW_COL, read_json, to_raw
from hybridrec.store.tables import Warehouse
from jobs import ingest as ingest_job

REPO = Path(__file__).resolve().parents[2]
BEHAVIOUR_OUT = [
    "user_id",
    "item_id",
    "rating_raw",
    "rating",
    "event_type",
    "event_ts",
    "raw",
    "source",
    "parse_error",
]


def _by(df: DataFrame, key: str) -> dict:
    return {row[key]: row.asDict() for row in df.collect()}


# --- generic.to_raw --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(spark) -> DataFrame:
    """A behaviour table in someone else's column names."""
    return spark.createDataFrame(
        [
            ("c1", "s1", "4.5", "1700000000", "x"),
            ("c2", "s2", "five", "1700000001", None),
        ],
        "customer string, sku string, stars string, ts string, extra string",
    )


def test_to_raw_renames_mapped_columns_and_fills_constants(shop):
    mapping = {"user_id": "customer", "item_id": "sku", "rating": "stars", "event_ts": "ts"}

    out = to_raw(
        shop, BEHAVIOUR_SCHEMA, mapping, "behaviour:csv:shop", constants={"event_type": "click"}
    )
    rows = _by(out, "user_id")

    assert out.columns == BEHAVIOUR_OUT
    assert {k: v for k, v in rows["c1"].items() if k != "raw"} == {
        "user_id": "c1",
        "item_id": "s1",
        "rating_raw": "4.5",
        "rating": 4.5,
        "event_type": "click",
        "event_ts": "1700000000",
        "source": "behaviour:csv:shop",
        "parse_error": None,
    }
    # The whole input row, unmapped columns included (a null one is left out of the JSON).
    assert json.loads(rows["c1"]["raw"]) == {
        "customer": "c1",
        "sku": "s1",
        "stars": "4.5",
        "ts": "1700000000",
        "extra": "x",
    }
    assert json.loads(rows["c2"]["raw"]) == {
        "customer": "c2",
        "sku": "s2",
        "stars": "five",
        "ts": "1700000001",
    }


def test_to_raw_non_numeric_rating_is_null_with_its_text_kept(shop):
    mapping = {"user_id": "customer", "item_id": "sku", "rating": "stars", "event_ts": "ts"}

    row = _by(to_raw(shop, BEHAVIOUR_SCHEMA, mapping, "b"), "user_id")["c2"]

    assert row["rating"] is None
    assert row["rating_raw"] == "five"  # so ingest can reject it as "rating is not a number"


def test_to_raw_takes_our_names_as_they_are_and_leaves_the_rest_null(spark):
    df = spark.createDataFrame(
        [("u1", "A1", "nice", 3)], "user_id string, asin string, body string, stars int"
    )

    out = to_raw(df, REVIEW_SCHEMA, {"item_id": "asin", "review_text": "body"}, "reviews:x")
    (row,) = out.collect()

    assert out.columns == [
        "user_id",
        "item_id",
        "rating_raw",
        "rating",
        "summary",
        "review_text",
        "event_ts",
        "raw",
        "source",
        "parse_error",
    ]
    # user_id is present under our name; rating, summary, event_ts are neither mapped nor present
    # (stars is not mapped, so it is not taken as the rating); no constants -> null.
    assert row.asDict() == {
        "user_id": "u1",
        "item_id": "A1",
        "rating_raw": None,
        "rating": None,
        "summary": None,
        "review_text": "nice",
        "event_ts": None,
        "raw": '{"user_id":"u1","asin":"A1","body":"nice","stars":3}',
        "source": "reviews:x",
        "parse_error": None,
    }


def test_to_raw_numeric_rating_column_is_cast(spark):
    df = spark.createDataFrame([("u1", "i1", 4)], "user_id string, item_id string, score int")

    (row,) = to_raw(df, BEHAVIOUR_SCHEMA, {"rating": "score"}, "b").collect()

    assert (row["rating_raw"], row["rating"]) == ("4", 4.0)


def test_to_raw_unknown_target_column_is_named(shop):
    with pytest.raises(ValueError, match=r"behaviour:csv:shop.*unknown target.*'userid'"):
        to_raw(shop, BEHAVIOUR_SCHEMA, {"userid": "customer"}, "behaviour:csv:shop")


def test_to_raw_mapped_column_missing_from_input_is_named(shop):
    with pytest.raises(ValueError, match=r"behaviour:csv:shop.*'client'.*not in the input"):
        to_raw(
            shop,
            BEHAVIOUR_SCHEMA,
            {"user_id": "client", "item_id": "sku"},
            "behaviour:csv:shop",
        )


# --- movielens.read --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movielens_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ml")
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964981247\n"
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,funny,1445714994\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"American President, The (1995)",Adventure|Comedy\n'
        '20,"Bird, The ""Big"" (2000)",(no genres listed)\n'
    )
    return folder


def test_movielens_read(spark, movielens_folder):
    folder = str(movielens_folder)

    raw = movielens.read(spark, folder)

    assert raw.behaviour.columns == BEHAVIOUR_OUT
    behaviour = {(r["item_id"]): r for r in raw.behaviour.collect()}
    assert {k: v for k, v in behaviour["20"].asDict().items() if k not in ("raw", "source")} == {
        "user_id": "1",
        "item_id": "20",
        "rating_raw": "3.5",
        "rating": 3.5,
        "event_type": "rating",
        "event_ts": "964981247",
        "parse_error": None,
    }
    assert behaviour["10"]["source"] == f"behaviour:movielens:{folder}/ratings.csv"
    # The record as CSV, every field in file order.
    assert behaviour["10"]["raw"] == "1,10,4.0,964982703"
    assert behaviour["10"]["parse_error"] is None

    (review,) = raw.reviews.collect()
    assert (review["user_id"], review["item_id"], review["review_text"]) == ("1", "10", "funny")
    assert (review["rating"], review["summary"], review["event_ts"]) == (None, None, "1445714994")

    items = {r["item_id"]: (r["title"], r["description"], r["raw"]) for r in raw.items.collect()}
    assert items == {
        "10": (
            "American President, The (1995)",
            "Adventure, Comedy",
            '10,"American President, The (1995)",Adventure|Comedy',
        ),
        # raw keeps the genres as read, before they became the description.
        "20": ('Bird, The "Big" (2000)', None, '20,"Bird, The ""Big"" (2000)",(no genres listed)'),
    }


def test_movielens_crlf_ratings_and_a_cr_inside_a_tag(spark, tmp_path):
    # A CRLF file's records end before their \r; a bare \r inside a record is data (gzip too).
    (tmp_path / "ratings.csv").write_bytes(
        b"userId,movieId,rating,timestamp\r\n1,10,4.0,964982703\r\n1,20,3.5,964981247\r\n"
    )
    with gzip.open(tmp_path / "tags.csv.gz", "wb") as f:
        f.write(b"userId,movieId,tag,timestamp\n1,10,so\rfunny,1445714994\n1,20,dull,1445714995\n")

    raw = movielens.read(spark, str(tmp_path))

    ratings = sorted((r["raw"], r["event_ts"], r["parse_error"]) for r in raw.behaviour.collect())
    assert ratings == [
        ("1,10,4.0,964982703", "964982703", None),
        ("1,20,3.5,964981247", "964981247", None),
    ]
    tags = sorted(
        (r["review_text"], r["event_ts"], r["parse_error"]) for r in raw.reviews.collect()
    )
    assert tags == [("dull", "1445714995", None), ("so\rfunny", "1445714994", None)]


def test_movielens_without_ratings_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        movielens.read(spark, str(tmp_path))


# --- amazon.read_reviews / read_meta ---------------------------------------------------------


def _gzip_lines(path: Path, lines: list[str], end: str = "\n") -> str:
    with gzip.open(path, "wb") as f:
        f.write("".join(line + end for line in lines).encode())
    return str(path)


def _write_lines(path: Path, lines: list[str], end: str) -> str:
    if path.suffix == ".gz":
        return _gzip_lines(path, lines, end)
    path.write_bytes("".join(line + end for line in lines).encode())
    return str(path)


def _literal_cr(line: str) -> str:
    """A JSON line whose escaped \\r is a raw carriage return, as some Amazon files have it."""
    return line.replace("\\r", "\r")


def _review(user: str, item: str, overall, ts: int, text: str) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "overall": overall,
            "summary": f"About {item}",
            "reviewText": text,
            "unixReviewTime": ts,
        }
    )


CORRUPT = '{"reviewerID": "U9", "asin": "B9", "overall": 5.0, "summ'
T0 = 1_700_000_000
REVIEW_LINES = [
    _review("U1", "A1", 5.0, T0, "Great"),
    _review("U1", "A2", 4.0, T0 + 100, "Fine"),
    _review("U1", "A3", 3.0, T0 + 200, "Meh"),
    _review("U1", "A3", 3.0, T0 + 200, "Meh"),  # exact duplicate line
    CORRUPT,
    # A raw CR inside a string is part of its line, not a line break.
    _literal_cr(_review("U2", "A1", 2.0, T0 + 300, "Poor\rvalue")),
]
META_LINES = [
    json.dumps(
        {
            "asin": "A1",
            "title": "<span>Weekly Mag</span>",
            "description": ["First issue.", "<p>Second   issue</p>"],
        }
    ),
    json.dumps({"asin": "A2", "title": "<img src='x.jpg'>", "description": "Plain text"}),
]


@pytest.fixture(scope="module")
def amazon_files(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("amazon")
    return (
        _gzip_lines(folder / "reviews.json.gz", REVIEW_LINES),
        _gzip_lines(folder / "meta.json.gz", META_LINES, "\r\n"),
    )


def test_amazon_read_reviews(spark, amazon_files):
    reviews_path, _ = amazon_files

    rows = amazon.read_reviews(spark, reviews_path).collect()

    assert len(rows) == len(REVIEW_LINES)
    by_raw = {r["raw"]: r.asDict() for r in rows}
    assert by_raw[REVIEW_LINES[0]] == {
        "user_id": "U1",
        "item_id": "A1",
        "rating_raw": "5.0",
        "summary": "About A1",
        "review_text": "Great",
        "event_ts": str(T0),
        "raw": REVIEW_LINES[0],
        "source": f"reviews:amazon:{reviews_path}",
        "parse_error": None,
        "rating": 5.0,
    }
    # The corrupt line survives as it came, with nothing parsed: ingest's "unparseable record".
    corrupt = by_raw[CORRUPT]
    assert (corrupt["user_id"], corrupt["item_id"], corrupt["event_ts"]) == (None, None, None)
    assert corrupt["rating"] is None
    assert corrupt["parse_error"] == "unparseable record"
    assert by_raw[REVIEW_LINES[5]]["review_text"] == "Poor\rvalue"


@pytest.mark.parametrize("end", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", ["r.json", "r.json.gz"], ids=["plain", "gz"])
def test_amazon_a_record_is_a_line_and_a_cr_inside_it_is_data(spark, tmp_path, end, name):
    cr_line = _literal_cr(_review("U3", "A3", 4.0, T0, "Line one\rline two"))
    lines = [REVIEW_LINES[0], cr_line, CORRUPT]
    path = _write_lines(tmp_path / name, lines, end)

    rows = amazon.read_reviews(spark, path).collect()

    # One record per line, its raw the whole line without its line ending.
    assert sorted(r["raw"] for r in rows) == sorted(lines)
    by_raw = {r["raw"]: r for r in rows}
    assert (by_raw[cr_line]["review_text"], by_raw[cr_line]["parse_error"]) == (
        "Line one\rline two",
        None,
    )
    assert by_raw[CORRUPT]["parse_error"] == "unparseable record"


def test_amazon_meta_line_with_a_cr_inside_is_one_record(spark, tmp_path):
    cr_line = _literal_cr(json.dumps({"asin": "A1", "title": "Mag", "description": "a\rb"}))
    path = _write_lines(tmp_path / "m.json", [cr_line, META_LINES[1]], "\n")

    rows = amazon.read_meta(spark, path).collect()

    assert sorted(r["raw"] for r in rows) == sorted([cr_line, META_LINES[1]])
    assert {r["item_id"]: r["description"] for r in rows} == {"A1": "a b", "A2": "Plain text"}


def test_generic_json_a_record_is_a_line_and_a_cr_inside_it_is_data(spark, tmp_path):
    cr_line = _literal_cr(json.dumps({"u": "b", "text": "x\ry"}))
    path = _write_lines(tmp_path / "x.json", ['{"u": "a"}', cr_line, '{"u": oops'], "\r\n")

    rows = read_json(spark, path, {}).collect()

    # The generic reader is strict JSON: the CR line is one reject, kept whole.
    assert sorted((r[RAW_COL], r[ERROR_COL]) for r in rows) == sorted(
        [('{"u":"a"}', None), (cr_line, "unparseable record"), ('{"u": oops', "unparseable record")]
    )


def test_amazon_non_numeric_overall_keeps_its_text(spark, tmp_path):
    path = _gzip_lines(tmp_path / "r.json.gz", [_review("U1", "A1", "five", T0, "x")])

    (row,) = amazon.read_reviews(spark, path).collect()

    assert (row["rating_raw"], row["rating"]) == ("five", None)


def test_amazon_read_meta(spark, amazon_files):
    _, meta_path = amazon_files

    out = amazon.read_meta(spark, meta_path)
    rows = _by(out, "item_id")

    assert out.columns == ["item_id", "title", "description", "raw", "source", "parse_error"]
    assert (rows["A1"]["title"], rows["A1"]["description"]) == (
        "Weekly Mag",
        "First issue. Second issue",
    )
    # A title that is only markup is no title.
    assert (rows["A2"]["title"], rows["A2"]["description"]) == (None, "Plain text")
    assert rows["A2"]["raw"] == META_LINES[1]
    assert rows["A2"]["source"] == f"items:amazon:{meta_path}"


def test_amazon_meta_keeps_text_after_a_literal_less_than(spark, tmp_path):
    line = json.dumps({"asin": "A1", "title": "Ages 3 < 5", "description": "Fits 2 < 3 cups"})
    path = _gzip_lines(tmp_path / "m.json.gz", [line])

    (row,) = amazon.read_meta(spark, path).collect()

    assert (row["title"], row["description"]) == ("Ages 3 < 5", "Fits 2 < 3 cups")


# --- Amazon end to end through the ingest job -------------------------------------------------


def test_amazon_ingest_accounts_for_every_line(spark, amazon_files, tmp_path):
    reviews_path, meta_path = amazon_files
    cfg2 = load_config(
        [REPO / "conf" / "amazon.yaml"],
        [
            f"run.work_dir={tmp_path}",
            f"source.amazon.reviews_path={reviews_path}",
            f"source.amazon.meta_path={meta_path}",
        ],
    )

    counts = ingest_job.run(spark, cfg2, "run-x")

    # 6 lines (one with a raw CR inside, one record still): 4 reviews kept, the duplicate and
    # the corrupt line rejected.
    # U1's newest item A3 is test, A2 validation, A1 train; U2 has one item: train.
    assert counts["reviews_in"] == counts["interactions"] + counts["reviews_rejected"]
    assert {k: counts[k] for k in ("reviews_in", "interactions", "reviews_rejected")} == {
        "reviews_in": 6,
        "interactions": 4,
        "reviews_rejected": 2,
    }
    assert (counts["items_in"], counts["items_rejected"], counts["items"]) == (2, 0, 3)
    assert (counts["train_rows"], counts["validation_rows"], counts["test_rows"]) == (2, 1, 1)
    assert "behaviour_in" not in counts

    rejects = Warehouse.from_config(spark, cfg2).read("rejects", run_id="run-x")
    got = sorted((r["raw"], r["reason"], r["source"], r["run_id"]) for r in rejects.collect())
    source = f"reviews:amazon:{reviews_path}"
    assert got == sorted(
        [
            (CORRUPT, "unparseable record", source, "run-x"),
            (REVIEW_LINES[3], "duplicate row", source, "run-x"),
        ]
    )


def test_clean_input_ingests_with_no_rejects(spark, tmp_path):
    # A partitioned write of zero reject rows leaves no file: ingest must still account and finish.
    reviews = _gzip_lines(
        tmp_path / "clean.json.gz",
        [
            _review("U1", "A1", 5.0, 1_400_000_000, "great"),
            _review("U1", "A2", 4.0, 1_400_000_100, "good"),
        ],
    )
    cfg2 = load_config(
        [REPO / "conf" / "amazon.yaml"],
        [f"run.work_dir={tmp_path}", f"source.amazon.reviews_path={reviews}"],
    )

    counts = ingest_job.run(spark, cfg2, "run-clean")

    assert (counts["reviews_in"], counts["interactions"], counts["rejects"]) == (2, 2, 0)
    assert (counts["train_rows"], counts["test_rows"]) == (1, 1)


def test_amazon_bad_bytes_and_missing_overall_are_rejected(spark, tmp_path):
    path = tmp_path / "reviews.json.gz"
    good = _review("U1", "A1", 5.0, T0, "great")
    no_overall = json.dumps({"reviewerID": "U2", "asin": "A2", "unixReviewTime": T0})
    with gzip.open(path, "wb") as f:
        # Spark's text reader keeps bad bytes as they are; the line is rejected, not decoded.
        f.write(good.encode() + b"\n")
        f.write(good.replace("U1", "U\xff1").encode("latin-1") + b"\n")
        f.write(no_overall.encode() + b"\n")
    cfg2 = load_config(
        [REPO / "conf" / "amazon.yaml"],
        [f"run.work_dir={tmp_path}", f"source.amazon.reviews_path={path}"],
    )

    counts = ingest_job.run(spark, cfg2, "run-b")

    assert (counts["reviews_in"], counts["interactions"], counts["rejects"]) == (3, 1, 2)
    rejects = Warehouse.from_config(spark, cfg2).read("rejects", run_id="run-b").collect()
    assert sorted((r.reason, r.raw) for r in rejects) == [
        ("invalid encoding", good.replace("U1", "U\ufffd1")),
        ("rating event without rating", no_overall),
    ]


def test_local_frames_travel_in_tasks_far_below_sparks_size_warning(spark):
    import pandas as pd

    from hybridrec.sources import LOCAL_TASK_BYTES, frame_to_raw

    n = 6000  # ~2 MB of review text: one task each used to carry half of it
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "item_id": [f"i{i % 50}" for i in range(n)],
            "rating": [4.0] * n,
            "summary": ["fine"] * n,
            "review_text": ["words " * 60] * n,
            "event_ts": ["2026-01-01"] * n,
        }
    )
    before = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")

    raw = frame_to_raw(spark, frame, REVIEW_SCHEMA, "reviews:test")

    partitions = raw.rdd.getNumPartitions()
    assert partitions >= frame.memory_usage(deep=True).sum() // LOCAL_TASK_BYTES
    assert raw.count() == n and raw.where("review_text IS NULL").count() == 0
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == before
