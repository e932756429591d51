"""SQL as an analyst or a BI tool reaches it: ``hybridrec sql``, JDBC through ``hybridrec
sql-server`` and beeline, and stock ``spark-sql`` with ``hybridrec spark-conf``'s properties.
Each is its own process, one at a time (embedded Derby serves one process)."""

from __future__ import annotations

import csv
import io
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPARK_BIN = Path(pyspark.__file__).parent / "bin"
NDCG_QUERY = (
    "SELECT model, value FROM hybridrec.metrics_latest "
    "WHERE metric = 'ndcg' AND segment = 'all' ORDER BY model"
)


def _hybridrec(analyst_run, *args: str, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.cli", args[0], *analyst_run.conf_args(), *args[1:]]
    return subprocess.run(
        command,
        cwd=cwd,
        env={**analyst_run.env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_sql_prints_the_result_and_nothing_else_on_stdout(analyst_run, tmp_path):
    done = _hybridrec(analyst_run, "sql", NDCG_QUERY, "--format", "csv", cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["model"] for r in rows] == ["als", "cooc", "hybrid", "popularity", "text"]
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    assert list(tmp_path.iterdir()) == []  # no spark-warehouse, derby.log or mlflow.db


def test_sql_cuts_long_results_and_says_so(analyst_run):
    done = _hybridrec(
        analyst_run, "sql", "SELECT * FROM hybridrec.recommendations_explained", "--max-rows", "3"
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.strip().splitlines()) == 4  # a header and three rows
    assert "reason_item_title" in done.stdout.splitlines()[0]
    assert "showing the first 3 rows" in done.stderr


def test_a_refused_statement_is_one_line_and_exit_5(analyst_run):
    done = _hybridrec(analyst_run, "sql", "SELECT * FROM hybridrec.no_such_table")

    assert done.returncode == 5
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("hybridrec: sql error:")]
    assert len(errors) == 1 and "TABLE_OR_VIEW_NOT_FOUND" in errors[0]
    assert "Traceback" not in done.stderr and "at org.apache" not in done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_latest_over_jdbc_with_beeline(analyst_run, tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "pipelines.cli", "sql-server", *analyst_run.conf_args()]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=REPO,
        env={**analyst_run.env(), "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "sql-server: listening on" not in (tmp_path / "server.log").read_text():
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the SQL server did not come up in 180 s"
            time.sleep(1)
        url = f"jdbc:hive2://127.0.0.1:{port}/hybridrec"
        done = subprocess.run(
            [str(SPARK_BIN / "beeline"), "-u", url, "--outputformat=csv2", "--silent=true"]
            + ["-e", NDCG_QUERY],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # beeline echoes its continuation prompt before the header on stdout.
        lines = done.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.endswith("model,value"))
        rows = list(csv.DictReader(["model,value", *lines[header + 1 :]]))
        assert [r["model"] for r in rows] == ["als", "cooc", "hybrid", "popularity", "text"]

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "the port is still open"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def test_stock_spark_sql_opens_the_same_catalog(analyst_run, tmp_path):
    properties = tmp_path / "catalog.properties"
    done = _hybridrec(analyst_run, "spark-conf")
    assert done.returncode == 0, done.stderr[-3000:]
    properties.write_text(done.stdout)
    work = tmp_path / "cwd"
    work.mkdir()

    query = subprocess.run(
        [
            str(SPARK_BIN / "spark-sql"),
            "--properties-file",
            str(properties),
            "-e",
            "SELECT count(*) FROM hybridrec.recommendations_explained",
        ],
        cwd=work,
        env={**analyst_run.env(), "PYSPARK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert query.returncode == 0, query.stderr[-3000:]
    assert int(query.stdout.strip().splitlines()[-1]) > 0
    assert list(work.iterdir()) == []
