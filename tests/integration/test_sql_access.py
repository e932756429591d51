"""SQL as an analyst or a BI tool reaches it: ``hybridrec sql``, JDBC through ``hybridrec
sql-server`` and beeline, and stock ``spark-sql $(hybridrec spark-conf)``. Each is its own
process, one after the other: embedded Derby serves one process at a time."""

from __future__ import annotations

import csv
import io
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

from hybridrec.analyst.sql_guard import RULE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPARK_BIN = Path(pyspark.__file__).parent / "bin"
# The analyst run serves the learned ranker (ranker.serve: always), so hybrid_linear is a model.
MODELS = ["als", "cooc", "ease", "hybrid", "hybrid_linear", "item_knn", "popularity", "text"]
NDCG_LATEST = (
    "SELECT model, value FROM hybridrec.metrics_latest "
    "WHERE metric = 'ndcg' AND segment = 'all' ORDER BY model"
)


def _cli(analyst_run, command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", command, *analyst_run.conf_args(), *args]


def _env(analyst_run) -> dict[str, str]:
    return {**analyst_run.env(), "PYTHONPATH": str(REPO)}


def _hybridrec(analyst_run, command: str, *args: str, cwd: Path = REPO):
    return subprocess.run(
        _cli(analyst_run, command, *args),
        cwd=cwd,
        env=_env(analyst_run),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sql_prints_the_run_metrics_as_a_table_and_nothing_else(analyst_run, tmp_path):
    statement = (
        "SELECT model, metric, value FROM hybridrec.metrics "
        f"WHERE run_id = '{analyst_run.run_id}' AND metric = 'ndcg' AND segment = 'all' "
        "ORDER BY model"
    )

    done = _hybridrec(analyst_run, "sql", statement, cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = [line.split() for line in done.stdout.strip().splitlines()]
    assert header == ["model", "metric", "value"]
    assert [row[0] for row in rows] == MODELS
    hybrid = next(row for row in rows if row[0] == "hybrid")
    assert hybrid[1] == "ndcg" and 0.0 < float(hybrid[2]) <= 1.0
    assert list(tmp_path.iterdir()) == []  # no spark-warehouse, derby.log or metastore_db


def test_sql_csv_parses_and_long_results_are_cut(analyst_run):
    statement = "SELECT * FROM hybridrec.recommendations_explained"

    done = _hybridrec(analyst_run, "sql", statement, "--format", "csv", "--max-rows", "3")

    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 3 and "reason_item_title" in rows[0]
    assert all(row["user_id"] for row in rows)
    assert "showing the first 3 rows" in done.stderr


def test_a_refused_statement_is_one_line_and_exit_5(analyst_run):
    done = _hybridrec(analyst_run, "sql", "SELECT * FROM hybridrec.no_such_table")

    assert done.returncode == 5
    assert done.stdout == ""
    ours = [line for line in done.stderr.splitlines() if line.startswith("hybridrec:")]
    assert len(ours) == 1 and ours[0].startswith("hybridrec: sql error: [TABLE_OR_VIEW_NOT_FOUND]")
    assert "Traceback" not in done.stderr and "at org.apache" not in done.stderr


# The statements that once doubled a snapshot, added a warehouse folder and broke every view.
ISSUE_WRITES = [
    "INSERT INTO hybridrec.interactions SELECT * FROM hybridrec.interactions",
    "CREATE TABLE hybridrec.t (a INT)",
    "DROP TABLE hybridrec.runs",
]
COUNTS = (
    "SELECT (SELECT count(*) FROM hybridrec.interactions) AS interactions, "
    "(SELECT count(*) FROM hybridrec.interactions_latest) AS interactions_latest, "
    "(SELECT count(*) FROM hybridrec.metrics_latest) AS metrics_latest"
)


def _readme_query(marker: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(
        rf"<!-- {marker}:begin -->\n```sql\n(.*?)```\n<!-- {marker}:end -->", text, re.S
    )
    assert block, f"README.md lost its {marker} query"
    return block.group(1)


def _on_both_engines(analyst_run, query: str) -> list[dict[str, str]]:
    """``query``'s rows (CSV) from DuckDB over the snapshot files, checked to be Spark's over
    the catalog's views, and not empty."""
    answers = {}
    for engine in ("duckdb", "spark"):
        done = _hybridrec(
            analyst_run, "sql", query, "--engine", engine, "--format", "csv", "--max-rows", "100000"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answers[engine] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert answers["duckdb"] and answers["duckdb"] == answers["spark"]
    return answers["duckdb"]


def test_the_readme_s_shared_interest_query_answers_alike_on_both_engines(analyst_run):
    """Which users share u42's top interest, and what do we recommend them: the README's one
    query, answered by DuckDB over the snapshot files and by Spark over the catalog's views."""
    rows = _on_both_engines(analyst_run, _readme_query("interests-query"))
    top = _hybridrec(
        analyst_run,
        "sql",
        "SELECT top_tag FROM hybridrec.user_interests_latest WHERE user_id = 'u42'",
        "--format",
        "csv",
    )
    (u42,) = csv.DictReader(io.StringIO(top.stdout))
    assert {r["top_tag"] for r in rows} == {u42["top_tag"]}
    assert "u42" not in {r["user_id"] for r in rows}
    # Each interest a reason names is one of the topics' labels, said the one way.
    named = [r["interest"] for r in rows if r["interest"]]
    assert named and all(n.startswith("for your interest in ") for n in named)


def test_current_lists_name_the_same_interests_as_the_explained_view(analyst_run):
    """Without a stream every current list is the batch's, and both views name its interests
    by the one definition, on both engines."""
    query = (
        "SELECT c.user_id, c.rank, c.list_source, c.interest, c.interest_topic_id, "
        "e.interest AS explained, e.interest_topic_id AS explained_topic_id "
        "FROM hybridrec.recommendations_current c JOIN hybridrec.recommendations_explained e "
        "ON e.user_id = c.user_id AND e.rank = c.rank ORDER BY c.user_id, c.rank"
    )
    rows = _on_both_engines(analyst_run, query)
    assert {r["list_source"] for r in rows} == {"batch"}
    assert all(
        (r["interest"], r["interest_topic_id"]) == (r["explained"], r["explained_topic_id"])
        for r in rows
    )
    assert any(r["interest"] for r in rows)


def _counts(analyst_run) -> dict[str, str]:
    done = _hybridrec(analyst_run, "sql", COUNTS, "--format", "csv")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hybridrec sql: answered by duckdb" in done.stderr
    (counts,) = csv.DictReader(io.StringIO(done.stdout))
    assert all(int(n) > 0 for n in counts.values())
    return counts


def _warehouse_listing(analyst_run) -> list[str]:
    db = analyst_run.work_dir / "warehouse" / "hybridrec.db"
    return sorted(str(p.relative_to(db)) for p in db.rglob("*") if "_staging" not in p.parts)


def test_writes_are_refused_before_they_run_and_change_nothing(analyst_run, tmp_path):
    before, listing = _counts(analyst_run), _warehouse_listing(analyst_run)
    script = tmp_path / "write.sql"
    script.write_text(ISSUE_WRITES[0] + ";\n", encoding="utf-8")

    runs = [_hybridrec(analyst_run, "sql", statement) for statement in ISSUE_WRITES[1:]]
    runs.append(_hybridrec(analyst_run, "sql", "-f", str(script)))

    for done in runs:
        assert done.returncode == 5, done.stderr[-3000:]
        assert done.stdout == ""
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith("hybridrec: sql refused: analyst SQL is read-only: refused before it ran")
        )
    assert _counts(analyst_run) == before
    assert _warehouse_listing(analyst_run) == listing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_listening(server: subprocess.Popen, log: Path, port: int) -> None:
    deadline = time.monotonic() + 120
    while "sql-server: listening on" not in log.read_text():
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the SQL server was not ready in 120 s"
        time.sleep(1)
    assert _port_open(port), log.read_text()[-3000:]


def _beeline(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SPARK_BIN / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/hybridrec"]
        + ["--outputformat=csv2", "--silent=true", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _beeline_rows(port: int, statement: str) -> list[dict[str, str]]:
    done = _beeline(port, "-e", statement)
    assert done.returncode == 0, done.stderr[-3000:]
    # beeline echoes its prompt before the header, on the header's line.
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("model,value"))
    return list(csv.DictReader(["model,value", *lines[start + 1 :]]))


def test_metrics_latest_over_jdbc_with_beeline(analyst_run, tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            _cli(analyst_run, "sql-server", "--port", str(port)),
            cwd=REPO,
            env=_env(analyst_run),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_listening(server, log, port)
        assert f"jdbc:hive2://127.0.0.1:{port}/hybridrec" in log.read_text()

        rows = _beeline_rows(port, NDCG_LATEST)

        assert [row["model"] for row in rows] == MODELS
        assert all(0.0 < float(row["value"]) <= 1.0 for row in rows)
        # The server holds the embedded catalog: hybridrec sql answers from the snapshots,
        # the same rows Spark gave over JDBC.
        done = _hybridrec(analyst_run, "sql", NDCG_LATEST, "--format", "csv")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "answered by duckdb" in done.stderr
        fast = list(csv.DictReader(io.StringIO(done.stdout)))
        assert [(r["model"], float(r["value"])) for r in fast] == [
            (r["model"], float(r["value"])) for r in rows
        ]

        script = tmp_path / "writes.sql"
        script.write_text("".join(f"{statement};\n" for statement in ISSUE_WRITES))
        listing = _warehouse_listing(analyst_run)
        refused = _beeline(port, "--force=true", "-f", str(script))
        # beeline prints each failed statement once as "Error: ..." and again in its "Caused by".
        refusals = [
            line
            for line in refused.stderr.splitlines()
            if line.startswith("Error:") and f"SecurityException: hybridrec: {RULE}" in line
        ]
        assert len(refusals) == len(ISSUE_WRITES), refused.stderr[-3000:]
        assert _beeline_rows(port, NDCG_LATEST) == rows
        assert _warehouse_listing(analyst_run) == listing
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not _port_open(port)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_stock_spark_sql_with_spark_conf_flags(analyst_run, tmp_path):
    """The README's form, through bash: ``$(...)`` word splitting must keep Derby's URL, whose
    ``;`` would end a command if it were typed."""
    spark_conf = shlex.join(_cli(analyst_run, "spark-conf"))
    statement = "SELECT count(*) FROM hybridrec.metrics"
    script = f'{shlex.quote(str(SPARK_BIN / "spark-sql"))} $({spark_conf}) -e "{statement}"'

    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=_env(analyst_run),
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 0
    assert list(tmp_path.iterdir()) == []  # derby.log went to the metastore's folder
