"""What an analyst meets after a run: every table and view answers SQL from a new process, the
catalog says what each column means, the run's log is quiet but never silent and ends by saying
where everything is, and the README's model-loading example works as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrec.store import catalog

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

READER = """
import json, sys
from hybridrec.store import catalog
from hybridrec.config.loader import load_config
from hybridrec.ops.session import get_spark
from hybridrec.views import STREAM_TABLES

run_id, conf = sys.argv[1], sys.argv[2:]
spark = get_spark(load_config(conf))
out = {"tables": {}, "views": {}, "comments": {}}
for name in (n for n in catalog.TABLES if n not in STREAM_TABLES):  # the stream's: test_stream
    table = spark.table(f"hybridrec.{name}")
    out["tables"][name] = {
        "rows": table.where(table.run_id == run_id).count(),
        "columns": table.columns,
    }
    out["views"][name] = spark.table(f"hybridrec.{name}_latest").count()
    described = spark.sql("DESCRIBE TABLE IDENTIFIER(:t)", args={"t": f"hybridrec.{name}"})
    out["comments"][name] = {
        r.col_name: r.comment for r in described.collect() if r.comment and r.col_name[0] != "#"
    }
explained = spark.table("hybridrec.recommendations_explained")
out["explained"] = {
    "rows": explained.count(),
    "titled": explained.where("title IS NOT NULL").count(),
    "named": explained.where("reason_item_id IS NOT NULL").count(),
    "named_titled": explained.where("reason_item_title IS NOT NULL").count(),
    "run_ids": sorted(r.run_id for r in explained.select("run_id").distinct().collect()),
}
print("RESULT " + json.dumps(out))
"""


def _result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def fresh_session(analyst_run, tmp_path_factory):
    """Everything read in a new Python process started in an empty folder."""
    cwd = tmp_path_factory.mktemp("analyst_cwd")
    done = subprocess.run(
        [sys.executable, "-c", READER, analyst_run.run_id, *analyst_run.conf],
        cwd=cwd,
        env={**analyst_run.env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return _result(done), cwd


def test_every_table_and_view_answers_from_a_new_process(fresh_session):
    result, _ = fresh_session
    for name, table in result["tables"].items():
        assert table["rows"] > 0, f"{name} has no rows of the run"
        assert result["views"][name] == table["rows"], f"{name}_latest is not the run's rows"


def test_the_dictionary_describes_exactly_the_columns_written(fresh_session):
    result, _ = fresh_session
    for name, table in result["tables"].items():
        assert set(table["columns"]) == set(catalog.TABLES[name].columns), name
        assert result["comments"][name] == catalog.TABLES[name].columns, name


def test_recommendations_explained_has_titles_for_the_run(fresh_session, analyst_run):
    result, _ = fresh_session
    explained = result["explained"]
    assert explained["rows"] == result["tables"]["recommendations"]["rows"]
    assert explained["titled"] == explained["rows"]  # every sample item has a title
    assert 0 < explained["named"] == explained["named_titled"]
    assert explained["run_ids"] == [analyst_run.run_id]


def test_a_new_session_leaves_nothing_in_its_working_folder(fresh_session):
    _, cwd = fresh_session
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_the_run_log_has_no_preventable_warning(analyst_run):
    for warning in ("WindowExec", "very large size", "created concurrently"):
        assert warning not in analyst_run.log


def test_the_run_log_is_never_silent_for_30_seconds(analyst_run):
    stamps = [
        _seconds(m)
        for m in re.finditer(r"^(?:\d\d/\d\d/\d\d )?(\d\d):(\d\d):(\d\d) ", analyst_run.log, re.M)
    ]
    assert len(stamps) > 20
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b >= a]
    assert max(gaps) <= 30


def test_a_wheel_install_runs_from_any_folder_with_its_shipped_config(analyst_run, wheel_install):
    # The run's own log names the config files it read: the copies inside the installed wheel.
    shipped = wheel_install.site_packages / "hybridrec" / "conf"
    assert re.search(
        rf"config: {re.escape(str(shipped / 'base.yaml'))} \+ "
        rf"{re.escape(str(shipped / 'local.yaml'))} \+ ",
        analyst_run.log,
    )
    assert re.search(r"run analyst-run complete in", analyst_run.log)


def test_the_run_ends_by_saying_where_everything_is(analyst_run):
    tail = analyst_run.log[analyst_run.log.rindex(f"run {analyst_run.run_id} complete") :]
    assert "hybrid minus each baseline" in tail
    assert f"tables: {analyst_run.work_dir}/warehouse/hybridrec.db" in tail
    assert "hybridrec sql --conf" in tail and "metrics_latest" in tail
    assert "jupyter lab" in tail and "explore_run.ipynb" in tail
    assert f"mlflow ui --backend-store-uri sqlite:///{analyst_run.work_dir}/mlflow.db" in tail
    assert re.search(r"runs:/[0-9a-f]{32}/als_model", tail)


def test_the_readmes_model_loading_example_works_as_written(analyst_run, tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- load-model:begin -->\n```python\n(.*?)```", readme, re.S).group(1)
    mlflow_run_id = re.search(r"runs:/([0-9a-f]{32})/als_model", analyst_run.log).group(1)
    # The two things a reader fills in: their config and the run id the run printed.
    script = block.replace('["conf/local.yaml"]', repr(analyst_run.conf)).replace(
        "<MLflow run id>", mlflow_run_id
    )
    assert script != block
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**analyst_run.env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\d+ users with ALS factors$", done.stdout, re.M)
    # The example scores real ids: a table of (user_id, item_id, prediction) with numbers.
    assert re.search(r"^\|\s*user_id\|\s*item_id\|\s*prediction\|$", done.stdout, re.M)
    assert re.search(r"^\|\s*\S+\|\s*\S+\|\s*-?\d+\.\d+\|$", done.stdout, re.M)
    assert not (tmp_path / "mlflow.db").exists()


def _seconds(match: re.Match) -> int:
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds
