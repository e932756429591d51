"""benchmarks/scale.py and its generator: row counts, ids, chunking, growth exponents."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scale  # noqa: E402
import scale_data  # noqa: E402

# Two and a half blocks of users: the last block is partial.
SPEC = scale_data.Spec(n_users=2 * scale_data.BLOCK_USERS + 500, n_items=200)


def _all(spec: scale_data.Spec, chunk_users: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    parts = list(scale_data.chunks(spec, chunk_users))
    return (
        pd.concat([p[0] for p in parts], ignore_index=True),
        pd.concat([p[1] for p in parts], ignore_index=True),
    )


@pytest.fixture(scope="module")
def generated() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _all(SPEC, chunk_users=scale_data.BLOCK_USERS)


def test_every_user_has_at_least_four_distinct_items_and_ids_are_in_range(generated):
    behaviour, _ = generated
    per_user = behaviour.groupby("user_id")["item_id"]
    assert per_user.ngroups == SPEC.n_users
    assert per_user.nunique().min() >= 4
    assert (per_user.nunique() == per_user.size()).all()  # drawn without replacement
    users = behaviour["user_id"].str[1:].astype(int)
    items = behaviour["item_id"].str[1:].astype(int)
    assert users.between(0, SPEC.n_users - 1).all()
    assert items.between(0, SPEC.n_items - 1).all()
    assert 8.5 < len(behaviour) / SPEC.n_users < 10.5  # Poisson(9), at least 4


def test_reviews_are_a_share_of_behaviour_rows_and_only_of_them(generated):
    behaviour, reviews = generated
    keys = set(zip(behaviour["user_id"], behaviour["item_id"], strict=True))
    assert set(zip(reviews["user_id"], reviews["item_id"], strict=True)) <= keys
    assert 0.35 < len(reviews) / len(behaviour) < 0.45
    assert reviews["review_text"].str.len().min() > 20
    assert reviews["rating"].between(1, 5).all()


def test_ratings_only_on_rating_events_and_timelines_increase(generated):
    behaviour, _ = generated
    rated = behaviour["event_type"] == "rating"
    assert behaviour.loc[rated, "rating"].notna().all()
    assert behaviour.loc[~rated, "rating"].isna().all()
    ts = behaviour["event_ts"].astype(np.int64)
    assert (ts.groupby(behaviour["user_id"]).diff().dropna() > 0).all()


def test_chunk_size_does_not_change_the_data(generated):
    for chunk_users in (1, 2 * scale_data.BLOCK_USERS, 10 * scale_data.BLOCK_USERS):
        behaviour, reviews = _all(SPEC, chunk_users)
        pd.testing.assert_frame_equal(behaviour, generated[0])
        pd.testing.assert_frame_equal(reviews, generated[1])


def test_a_different_seed_gives_different_data(generated):
    other = scale_data.Spec(SPEC.n_users, SPEC.n_items, seed=SPEC.seed + 1)
    behaviour, _ = next(scale_data.chunks(other, scale_data.BLOCK_USERS))
    assert not behaviour["item_id"].equals(generated[0]["item_id"].iloc[: len(behaviour)])


def test_gumbel_top_k_follows_the_probabilities():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-9]] * 20000))
    rows, cols = scale_data.gumbel_top_k(rng, logits, np.ones(20000, dtype=int))
    assert (rows == np.arange(20000)).all()
    share = np.bincount(cols, minlength=4) / 20000
    np.testing.assert_allclose(share, [0.7, 0.2, 0.1, 0.0], atol=0.015)
    rows, cols = scale_data.gumbel_top_k(rng, logits[:3], np.array([1, 3, 2]))
    assert list(rows) == [0, 1, 1, 1, 2, 2]
    assert len(set(cols[1:4])) == 3


def test_write_parquet_counts_what_it_writes(tmp_path):
    spec = scale_data.Spec(n_users=1200, n_items=50)
    counts = scale_data.write_parquet(spec, tmp_path, chunk_users=1000)
    assert counts["items"] == 50
    assert len(list((tmp_path / "behaviour").glob("*.parquet"))) == 2
    for name in ("behaviour", "reviews", "items"):
        assert len(pd.read_parquet(tmp_path / name)) == counts[name]


def test_growth_exponent():
    assert scale.growth_exponent(1.0, 10.0, 100, 1000) == pytest.approx(1.0)
    assert scale.growth_exponent(1.0, 100.0, 100, 1000) == pytest.approx(2.0)
    assert scale.growth_exponent(4.0, 4.0, 100, 1000) == pytest.approx(0.0)
    assert math.isnan(scale.growth_exponent(0.0, 4.0, 100, 1000))
    assert math.isnan(scale.growth_exponent(1.0, 4.0, 100, 100))


def test_exponents_per_consecutive_pair_and_flags_the_largest_pair_only():
    table = pd.DataFrame(
        {
            "size": ["a", "b", "c"],
            "interactions": [100, 1000, 10000],
            **{name: [1.0, 100.0, 1000.0] for name in scale.STAGES},
            "total": [5.0, 50.0, 500.0],
        }
    )
    table.loc[2, "score"] = 100.0 * 10**1.5
    growth = scale.exponents(table)
    assert list(growth["from"]) == ["a", "b"]
    assert growth.loc[0, "ingest"] == pytest.approx(2.0)  # above 1.1, but not the largest pair
    assert growth.loc[1, "ingest"] == pytest.approx(1.0)
    assert growth.loc[1, "score"] == pytest.approx(1.5)
    assert scale.flagged(growth) == ["score"]


def test_parse_sizes():
    assert scale.parse_sizes("1000:300,10000:1000") == [(1000, 300), (10000, 1000)]
    with pytest.raises(Exception, match="users:items"):
        scale.parse_sizes("1000")


def test_memory_of_a_process_without_spark_is_all_driver():
    # A fresh interpreter: the test process itself may hold the suite's SparkSession and workers.
    child = subprocess.Popen(
        [sys.executable, "-c", "import pandas, time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child.stdout.readline()
        driver, workers, n_workers = scale.memory_now(child.pid)
    finally:
        child.kill()
        child.wait()
    assert driver > 10  # that interpreter, with pandas loaded
    assert (workers, n_workers) == (0.0, 0)


def test_slowest_spark_stages_name_the_table_written_and_the_pipeline_stage(tmp_path):
    plan = (
        "== Physical Plan ==\nExecute InsertIntoHadoopFsRelationCommand (3)\n+- MapInPandas (2)\n"
        "\n(3) Execute InsertIntoHadoopFsRelationCommand\n"
        "Arguments: file:/w/hybridrec.db/_staging/recommendations/R1.ab, false\n\n"
    )
    events = [
        {"Event": "SQLExecutionStart", "executionId": 7, "physicalPlanDescription": plan},
        {"Event": "SparkListenerJobStart", "Stage IDs": [3, 4], "Properties": {}},
        {
            "Event": "SparkListenerJobStart",
            "Stage IDs": [5],
            "Properties": {"spark.sql.execution.id": "7"},
        },
    ]
    for stage, (start, end) in {3: (100, 102), 4: (103, 103.5), 5: (110, 140)}.items():
        info = {"Stage ID": stage, "Stage Name": f"s{stage}", "Number of Tasks": 2}
        info |= {"Submission Time": start * 1000, "Completion Time": end * 1000}
        events.append({"Event": "SparkListenerStageCompleted", "Stage Info": info})
    folder = tmp_path / "eventlog_v2_local-1"
    folder.mkdir()
    (folder / "events_1_local-1").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    times = {"ingest": {"began": 99, "ended": 105}, "score": {"began": 106, "ended": 150}}

    slow = scale.slowest_spark_stages(tmp_path, times, top=2)

    assert list(slow["spark stage"]) == [5, 3]
    assert list(slow["seconds"]) == pytest.approx([30.0, 2.0])
    assert list(slow["pipeline stage"]) == ["score", "ingest"]
    assert slow.iloc[0]["execution"] == "write recommendations [MapInPandas]"


def test_the_overhead_ratio_counts_the_driver_s_arithmetic_as_kernel_time():
    stage = {"seconds": 90.0, "results": {"kernel_seconds": 80.0, "driver_kernel_seconds": 5.0}}
    measured = {"task_slots": 2, "stages": {"score": stage, "evaluate": stage}}

    row = scale.overhead_row("u1", measured)

    # 80 task-seconds over 2 slots, and the driver's 5 s on top: 45 s of kernel.
    assert row["evaluate kernel s"] == pytest.approx(45.0)
    assert row["evaluate ratio"] == pytest.approx(2.0)
    assert row["evaluate tasks-only ratio"] == pytest.approx(2.25)


def test_the_ranker_s_boosting_rounds_count_as_score_s_task_arithmetic():
    score = {
        "seconds": 90.0,
        "results": {
            "kernel_seconds": 60.0,
            "ranker_boosting_seconds": 20.0,
            "driver_kernel_seconds": 5.0,
            "ranker_seconds": 30.0,
        },
    }
    evaluate = {"seconds": 90.0, "results": {"kernel_seconds": 80.0}}
    measured = {"task_slots": 2, "stages": {"score": score, "evaluate": evaluate}}

    row = scale.overhead_row("u1", measured)

    # (60 + 20) task-seconds over 2 slots, and the driver's 5 s: 45 s.
    assert row["score kernel s"] == pytest.approx(45.0)
    assert row["score tasks-only ratio"] == pytest.approx(2.25)
    assert (row["score ranker s"], row["score ranker boosting s"]) == (30.0, 20.0)
    assert row["evaluate kernel s"] == pytest.approx(40.0)  # no ranker there


def test_the_driver_kernel_clock_adds_up_its_blocks(spark):
    from hybridrec.ranking import blocks

    before = blocks.driver_kernel_seconds(spark)
    for _ in range(2):
        with blocks.driver_kernel(spark):
            time.sleep(0.05)
    with pytest.raises(RuntimeError), blocks.driver_kernel(spark):
        time.sleep(0.05)
        raise RuntimeError("a failed block's seconds count too")

    assert 0.15 <= blocks.driver_kernel_seconds(spark) - before < 1.0
