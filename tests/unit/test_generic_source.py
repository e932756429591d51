"""The generic source: RFC 4180 CSV and JSON reading, and CSV tables under other column names
end to end through ingest (malformed records, an input with no valid row)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridrec.config.loader import ConfigError, load_config
from hybridrec.sources.generic import (
    ERROR_COL,
    MIXED_ENDINGS,
    RAW_COL,
    WRONG_FIELDS,
    read_csv,
    read_json,
)
from hybridrec.store.tables import Warehouse
from jobs import ingest as ingest_job
from jobs.ingest import EmptyInputError
from pipelines.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_generic_csv_behaviour_and_reviews_through_ingest(spark, tmp_path):
    clicks = _write(
        tmp_path / "clicks.csv",
        "customer,sku,action,ts\n"
        "c1,s1,click,1400000000\n"
        "c1,s2,purchase,2014-05-14T10:00:00\n"
        "c1,s3,click,1400000300000\n"  # epoch milliseconds
        ",s1,click,1400000000\n"  # no customer: rejected
        "c2,s1,wishlist,1400000000\n",  # unknown event type: rejected
    )
    reviews = _write(
        tmp_path / "reviews.csv",
        "customer,sku,stars,body,ts\n"
        "c1,s2,5,lovely,1400086400\n"  # attaches to c1's purchase of s2
        "c2,s9,four,meh,1400000000\n",  # stars not a number: rejected
    )
    cfg = load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            "source.kind=generic",
            "source.generic.format=csv",
            "source.generic.options.header=true",
            f"source.generic.behaviour.path={clicks}",
            "source.generic.behaviour.columns={user_id: customer, item_id: sku, "
            "event_type: action, event_ts: ts}",
            f"source.generic.reviews.path={reviews}",
            "source.generic.reviews.columns={user_id: customer, item_id: sku, rating: stars, "
            "review_text: body, event_ts: ts}",
        ],
    )

    counts = ingest_job.run(spark, cfg, "run-g")

    assert (counts["behaviour_in"], counts["behaviour_rejected"]) == (5, 2)
    assert (counts["reviews_in"], counts["reviews_rejected"], counts["reviews_attached"]) == (
        2,
        1,
        1,
    )
    assert counts["interactions"] == 3
    warehouse = Warehouse.from_config(spark, cfg, "run-g")
    rows = {r.item_id: r for r in warehouse.read("interactions").collect()}
    assert rows["s2"].review_text == "lovely" and rows["s2"].rating == 5.0
    assert rows["s2"].event_type == "purchase"
    # c1: s2 at 2014-05-14T10:00 (ISO) is newest -> test; s3 at 1400000300 s (given in millis)
    # -> validation; s1 at 1400000000 s -> train.
    assert {k: r.split for k, r in rows.items()} == {
        "s2": "test",
        "s3": "validation",
        "s1": "train",
    }
    reasons = {r.reason for r in warehouse.read("rejects").collect()}
    assert reasons == {
        "missing user_id",
        "event_type not in ['rating', 'review', 'click', 'purchase']",
        "rating is not a number",
    }


def test_generic_source_needs_a_table():
    with pytest.raises(ConfigError, match="source.generic.behaviour.path"):
        load_config([], ["source.kind=generic"])


def test_cli_reports_a_config_error_and_exits_2(capsys):
    assert cli_main(["run", "--set", "als.rnak=3"]) == 2
    assert "unknown config key 'als.rnak' in --set als.rnak=3" in capsys.readouterr().err


# --- RFC 4180 CSV: quoted line breaks, "" escapes, records of the wrong width ------------------

MESSY_CSV = (
    b"customer,sku,stars,body,ts\r\n"
    b'c1,s1,5,"He said ""wow"", twice",1400000000\r\n'  # "" inside quotes, a comma too
    b'c1,s2,4,"line one\r\nline two",1400000100\r\n'  # a quoted line break
    b'" c2 ",s1,3,plain,1400000200\r\n'  # spaces inside quotes are data
    b"c2,s3,2,too,many,1400000300\r\n"  # one field too many
    b"c3,s4,1400000400\r\n"  # two fields too few
    b"c3,s5,1,,1400000500\r\n"  # an empty body
)


@pytest.fixture(scope="module")
def messy(spark, tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "reviews.csv"
    path.write_bytes(MESSY_CSV)
    rows = read_csv(spark, str(path), {}).collect()
    return {(r["customer"], r["sku"]): r.asDict() for r in rows}


def test_read_csv_reads_quotes_escapes_and_line_breaks_by_default(messy):
    assert messy[("c1", "s1")]["body"] == 'He said "wow", twice'
    assert messy[("c1", "s2")]["body"] == "line one\r\nline two"
    assert messy[(" c2 ", "s1")]["body"] == "plain"
    assert messy[("c3", "s5")]["body"] is None
    assert len(messy) == 6


def test_read_csv_raw_is_every_field_written_back(messy):
    assert messy[("c1", "s1")][RAW_COL] == 'c1,s1,5,"He said ""wow"", twice",1400000000'
    assert messy[("c1", "s2")][RAW_COL] == 'c1,s2,4,"line one\r\nline two",1400000100'
    assert messy[(" c2 ", "s1")][RAW_COL] == " c2 ,s1,3,plain,1400000200"
    wrong_width = {("c2", "s3"), ("c3", "s4")}
    assert all(r[ERROR_COL] is None for key, r in messy.items() if key not in wrong_width)


def test_read_csv_keeps_a_record_of_the_wrong_width_whole(messy):
    extra = messy[("c2", "s3")]
    short = messy[("c3", "s4")]

    assert (extra[ERROR_COL], extra[RAW_COL]) == (WRONG_FIELDS, "c2,s3,2,too,many,1400000300")
    assert (short[ERROR_COL], short[RAW_COL]) == (WRONG_FIELDS, "c3,s4,1400000400")


@pytest.mark.parametrize(
    ("content", "errors"),
    [
        # LF file: a quoted CRLF is data; a CRLF line would leave \r on its last field.
        (b'a,b\n1,"x\r\ny"\n2,z\r\n3,w\n', [None, MIXED_ENDINGS, None]),
        # CRLF file: a quoted LF is data; an LF-ended line runs into the next record.
        (b'a,b\r\n1,"x\ny"\r\n2,z\n3,w\r\n4,v\r\n', [None, WRONG_FIELDS, None]),
    ],
    ids=["lf file", "crlf file"],
)
def test_read_csv_keeps_quoted_line_breaks_and_flags_mixed_endings(
    spark, tmp_path, content, errors
):
    path = tmp_path / "x.csv"
    path.write_bytes(content)

    rows = read_csv(spark, str(path), {}).collect()

    assert rows[0]["b"] == content.split(b'"')[1].decode()
    assert [r[ERROR_COL] for r in rows] == errors


def test_read_csv_refuses_dropmalformed(spark, tmp_path):
    path = _write(tmp_path / "x.csv", "a,b\n1,2\n")

    with pytest.raises(ValueError, match="DROPMALFORMED"):
        read_csv(spark, path, {"mode": "dropmalformed"})


def test_read_csv_options_override_the_defaults(spark, tmp_path):
    path = _write(tmp_path / "x.csv", "1;'a;b'\n2;c\n")

    rows = read_csv(spark, path, {"header": "false", "sep": ";", "QUOTE": "'"}).collect()

    assert [(r["_c0"], r["_c1"], r[RAW_COL]) for r in rows] == [
        ("1", "a;b", "1;'a;b'"),
        ("2", "c", "2;c"),
    ]


def test_read_json_keeps_a_line_that_is_not_a_record(spark, tmp_path):
    path = _write(tmp_path / "x.json", '{"u": "a", "n": 3}\n{"u": "b", oops\n')

    rows = {r[RAW_COL]: r[ERROR_COL] for r in read_json(spark, path, {}).collect()}

    assert rows == {'{"n":3,"u":"a"}': None, '{"u": "b", oops': "unparseable record"}


def _generic(tmp_path, *overrides: str):
    return load_config(
        [],
        [
            f"run.work_dir={tmp_path / 'work'}",
            "source.kind=generic",
            "source.generic.format=csv",
            *overrides,
        ],
    )


REVIEW_COLUMNS = (
    "source.generic.reviews.columns={user_id: customer, item_id: sku, rating: stars, "
    "review_text: body, event_ts: ts}"
)


def test_messy_csv_through_ingest(spark, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(MESSY_CSV)
    cfg = _generic(tmp_path, f"source.generic.reviews.path={path}", REVIEW_COLUMNS)

    counts = ingest_job.run(spark, cfg, "run-m")

    warehouse = Warehouse.from_config(spark, cfg, "run-m")
    texts = {
        (r.user_id, r.item_id): r.review_text for r in warehouse.read("interactions").collect()
    }
    assert texts == {
        ("c1", "s1"): 'He said "wow", twice',
        ("c1", "s2"): "line one\r\nline two",
        ("c3", "s5"): None,
    }
    rejects = sorted((r.reason, r.raw) for r in warehouse.read("rejects").collect())
    assert rejects == [
        ("user_id has surrounding whitespace", " c2 ,s1,3,plain,1400000200"),
        ("wrong number of fields", "c2,s3,2,too,many,1400000300"),
        ("wrong number of fields", "c3,s4,1400000400"),
    ]
    assert (counts["reviews_in"], counts["interactions"], counts["rejects"]) == (6, 3, 3)


@pytest.mark.parametrize(
    ("content", "read", "summary"),
    [
        (b"", 0, "no rows"),
        (b"customer,sku,stars,body,ts\n", 0, "no rows"),
        (
            b"customer,sku,stars,body,ts\nc1,s1,5,x,32503680000\nc1,s2,5,x,0\n,s3,5,x,1\n",
            3,
            "1 event_ts after ",
        ),
    ],
    ids=["empty file", "header only", "all rejected"],
)
def test_no_valid_row_fails_before_any_table_is_written(spark, tmp_path, content, read, summary):
    path = tmp_path / "reviews.csv"
    path.write_bytes(content)
    cfg = _generic(tmp_path, f"source.generic.reviews.path={path}", REVIEW_COLUMNS)

    with pytest.raises(EmptyInputError) as error:
        ingest_job.run(spark, cfg, "run-e")

    message = str(error.value)
    assert message.startswith(f"generic csv (reviews {path}): 0 valid rows in {read} rows read (")
    assert summary in message
    assert message.endswith("); no table was written")
    assert Warehouse.from_config(spark, cfg, "run-e").tables() == []


def test_all_rejected_summary_counts_each_reason(spark, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"customer,sku,stars,body,ts\nc1,s1,5,x,0\nc1,s2,5,x,1\n,s3,5,x,1\n")
    cfg = _generic(tmp_path, f"source.generic.reviews.path={path}", REVIEW_COLUMNS)

    with pytest.raises(
        EmptyInputError, match=r"\(2 event_ts before 1990-01-01T00:00:00Z, 1 missing user_id\)"
    ):
        ingest_job.run(spark, cfg, "run-e")


@pytest.mark.slow  # a fresh process: its own JVM and MLflow store (about a minute)
def test_the_job_exits_non_zero_on_an_empty_input(tmp_path):
    path = _write(tmp_path / "reviews.csv", "customer,sku,stars,body,ts\n")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.ingest",
            "--set",
            f"run.work_dir={tmp_path / 'work'}",
            "--set",
            "spark.master=local[1]",
            "--set",
            "source.kind=generic",
            "--set",
            "source.generic.format=csv",
            "--set",
            f"source.generic.reviews.path={path}",
            "--set",
            REVIEW_COLUMNS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("hybridrec: input error: ")
    assert "0 valid rows in 0 rows read (no rows); no table was written" in done.stderr


def test_out_of_range_times_are_rejected_so_the_table_reads_back_in_pandas(spark, tmp_path):
    path = _write(
        tmp_path / "reviews.csv",
        "customer,sku,stars,body,ts\n"
        "c1,s1,5,fine,1400000000\n"
        "c1,s2,5,future,3000-01-01T00:00:00Z\n"  # was c1's test item
        "c1,s3,5,ancient,-1000-01-01T00:00:00Z\n"
        "c1,s4,5,epoch,0\n",
    )
    cfg = _generic(tmp_path, f"source.generic.reviews.path={path}", REVIEW_COLUMNS)

    ingest_job.run(spark, cfg, "run-t")

    warehouse = Warehouse.from_config(spark, cfg, "run-t")
    frame = warehouse.read("interactions").toPandas()
    assert frame[["item_id", "split"]].values.tolist() == [["s1", "train"]]
    assert frame["event_ts"].dt.year.tolist() == [2014]
    reasons = sorted(r.reason.rsplit(" ", 1)[0] for r in warehouse.read("rejects").collect())
    assert reasons == ["event_ts after", "event_ts before", "event_ts before"]


def test_row_accounting_counts_this_runs_rows_only(spark, tmp_path):
    first = _write(
        tmp_path / "a.csv", "customer,sku,stars,body,ts\nc1,s1,5,x,1400000000\n,s2,5,x,1\n"
    )
    second = _write(tmp_path / "b.csv", "customer,sku,stars,body,ts\nc2,s1,4,y,1400000000\n")
    columns = [REVIEW_COLUMNS]

    one = ingest_job.run(
        spark, _generic(tmp_path, f"source.generic.reviews.path={first}", *columns), "R1"
    )
    two = ingest_job.run(
        spark, _generic(tmp_path, f"source.generic.reviews.path={second}", *columns), "R2"
    )

    assert (one["reviews_in"], one["interactions"], one["rejects"]) == (2, 1, 1)
    assert (two["reviews_in"], two["interactions"], two["rejects"]) == (1, 1, 0)
    cfg = _generic(tmp_path, f"source.generic.reviews.path={first}", *columns)
    warehouse = Warehouse.from_config(spark, cfg)
    assert warehouse.runs("interactions") == ["R1", "R2"]
    assert [r.user_id for r in warehouse.read("interactions", run_id="R1").collect()] == ["c1"]
    assert warehouse.read("rejects", run_id="R1").count() == 1
