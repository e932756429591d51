"""The runs table and retries: a same-run retry replaces that run's rows, an empty input
changes no table, a run id keeps its settings, retention keeps the newest complete runs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from hybridrec.config.loader import ConfigError, load_config
from hybridrec.ops.tracking import JOB_TAG, RUN_ID_TAG
from hybridrec.store.runs import COMPLETE, FAILED, RUNS, RunLog
from hybridrec.store.tables import Warehouse
from pipelines.end_to_end import run_pipeline

HEADER = "user_id,item_id,rating,event_ts\n"
GOOD = "".join(
    f"U{u},I{i},4,{1600000000 + 3600 * (u * 10 + i)}\n" for u in range(3) for i in range(3)
)
OUT_OF_RANGE = "U7,I1,9,1600000000\nU8,I2,0,1600000000\n"


def _cfg(work, behaviour, *extra: str):
    return load_config(
        [],
        [
            f"run.work_dir={work}",
            "source.kind=generic",
            "source.generic.format=csv",
            "source.generic.options.header=true",
            f"source.generic.behaviour.path={behaviour}",
            "spark.master=local[2]",
            *extra,
        ],
    )


def test_a_retry_with_no_rejects_leaves_none_and_reuses_the_mlflow_runs(spark, tmp_path):
    behaviour = tmp_path / "behaviour.csv"
    behaviour.write_text(HEADER + GOOD + OUT_OF_RANGE)
    cfg = _cfg(tmp_path / "work", behaviour)
    warehouse = Warehouse.from_config(spark, cfg, "R1")

    run_pipeline(spark, cfg, "R1", ["ingest"])
    assert warehouse.read("rejects").count() == 2

    behaviour.write_text(HEADER + GOOD)  # the operator fixes the file and retries
    run_pipeline(spark, cfg, "R1", ["ingest"])

    assert warehouse.read("rejects").count() == 0
    assert spark.table("hybridrec.rejects").where(F.col("run_id") == "R1").count() == 0
    assert warehouse.read("interactions").count() == 9
    record = RunLog(warehouse).get("R1")
    assert record["attempt"] == 2
    assert '"behaviour_in": 9' in record["input_rows"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    jobs = client.search_runs(
        [client.get_experiment_by_name("hybridrec").experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = 'R1' and tags.`{JOB_TAG}` = 'ingest'",
    )
    assert len(jobs) == 1


def test_an_empty_input_changes_no_table(spark, tmp_path):
    behaviour = tmp_path / "behaviour.csv"
    behaviour.write_text(HEADER + GOOD)
    cfg = _cfg(tmp_path / "work", behaviour)
    warehouse = Warehouse.from_config(spark, cfg, "R1")
    run_pipeline(spark, cfg, "R1", ["ingest"])
    before = {t: warehouse.read(t).count() for t in ("interactions", "items", "rejects")}

    empty = tmp_path / "empty.csv"
    empty.write_text(HEADER)
    with pytest.raises(Exception, match="0 valid rows"):
        run_pipeline(spark, _cfg(tmp_path / "work", empty), "R2", ["ingest"])

    assert {t: warehouse.read(t).count() for t in before} == before
    assert all(warehouse.runs(t) == ["R1"] for t in before)
    assert RunLog(warehouse).get("R2")["status"] == FAILED


def test_a_run_id_keeps_the_settings_it_started_with(spark, tmp_path):
    behaviour = tmp_path / "behaviour.csv"
    behaviour.write_text(HEADER + GOOD)
    work = tmp_path / "work"
    run_pipeline(spark, _cfg(work, behaviour), "R1", ["ingest"])
    changed = _cfg(work, behaviour, "ingest.max_rating=4")

    with pytest.raises(ConfigError, match="ingest.max_rating"):
        run_pipeline(spark, changed, "R1", ["ingest"])


def test_retention_keeps_the_newest_complete_runs_only(spark, tmp_path):
    cfg = load_config([], [f"run.work_dir={tmp_path}"])
    warehouse = Warehouse.from_config(spark, cfg)
    log = RunLog(warehouse)
    started = {"R0": 1, "R1": 2, "R2": 3, "R3": 4}
    status = {"R0": FAILED, "R1": COMPLETE, "R2": COMPLETE, "R3": FAILED}
    for run_id, day in started.items():
        log._put(run_id, {"status": status[run_id], "started_at": datetime(2026, 1, day)})
        warehouse.write(spark.range(day).toDF("x"), "table_a", run_id=run_id)
        report = Path(warehouse.report_path(run_id))
        report.mkdir(parents=True)
        (report / "metrics_by_model.png").write_bytes(b"png")

    expired = log.apply_retention(keep_runs=1)

    assert expired == ["R0", "R1"]
    assert warehouse.runs("table_a") == ["R2", "R3"]
    assert sorted(p.name for p in Path(warehouse.report_path("R2")).parent.iterdir()) == [
        "run_id=R2",
        "run_id=R3",
    ]
    assert sorted(r["run_id"] for r in log.all()) == ["R0", "R1", "R2", "R3"]  # history stays
    assert warehouse.runs(RUNS) == ["R0", "R1", "R2", "R3"]
