"""The generic source end to end: CSV tables under other column names, through ingest."""

from __future__ import annotations

import pytest

from hybridrec.config import ConfigError, load_config
from hybridrec.tables import Warehouse
from jobs import ingest as ingest_job
from pipelines.cli import main as cli_main


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
