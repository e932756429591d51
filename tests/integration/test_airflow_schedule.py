"""The DAG as Airflow runs it: Airflow 3 in its own venv, ``airflow dags test`` of one logical
date running all six jobs through spark-submit, then the same date again, as a retry would.

Checks that the run id and the input partition come from the logical date (the jobs read CSV
files from a ``dt={{ ds }}`` folder named in a templated ``HYBRIDREC_SET``), that every task
succeeded and the pipeline run is complete, and that running the date again resumes the same
pipeline run without duplicating rows. The DAG's parse tests (test_airflow_dag.py, skipped in the
project venv) run here too, inside the Airflow venv.

The Airflow venv is built from .ci/airflow-requirements.txt into a cache folder keyed by that
file's hash and this Python's version (``$HYBRIDREC_AIRFLOW_CACHE``, default
``~/.cache/hybridrec``), so only the first run pays for the install. A failed install fails this
test; it is never skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hybridrec.config.loader import load_config
from hybridrec.ops.session import SHORT_JOB_JAVA_OPTIONS
from hybridrec.sources import sample

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / ".ci" / "airflow-requirements.txt"
JOBS_IN_ORDER = ("ingest", "embed", "topics", "als", "score", "evaluate")
JOBS = set(JOBS_IN_ORDER)
LOGICAL_DATE = "2026-11-23"
RUN_ID = "d20261123"  # the DAG's run id for that logical date
RERUN_SKIPS = "^(ingest|embed|topics|als|score)$"  # tasks the second dags test marks success
SPARK_CONNECTION = json.dumps(
    {"conn_type": "spark", "host": "local[2]", "extra": {"spark-binary": "spark-submit"}}
)
# On top of the analyst tests' tiny sample: fixed ALS and blend weights instead of tuning, no
# ALS model artifact, and few shuffle partitions under spark-submit too (spark.conf applies
# there; spark.shuffle_partitions does not). Six spark-submit jobs start six JVMs as it is.
FASTER = {
    "als": {"tune_on_validation": False, "rank": 4, "alpha": 1.0},
    "score": {"tune_on_validation": False},
    "spark": {"conf": {"spark.sql.shuffle.partitions": 2, "spark.ui.enabled": False}},
    "mlflow": {"log_model": False},
}


def fast_tiny_settings() -> dict:
    """TINY_SETTINGS of tests/integration/conftest.py, deep-merged with FASTER. That conftest is
    loaded already (conftest modules are not importable by name): found by its file."""
    path = str(Path(__file__).with_name("conftest.py"))
    conftest = next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == path)

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
        return out

    return merge(conftest.TINY_SETTINGS, FASTER)


class Timings:
    """Seconds per step, shown on the terminal as they happen (past pytest's capture)."""

    def __init__(self, capsys: pytest.CaptureFixture):
        self.capsys = capsys
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            self.say(f"{name}: {self.seconds[name]:.0f}s")

    def say(self, line: str) -> None:
        with self.capsys.disabled():
            print(f"\n[airflow] {line}", flush=True)


def run(cmd: list, *, env: dict, timeout: float, what: str, stdout_only: bool = False) -> str:
    """Run ``cmd`` in the repo; its stdout and stderr (or its stdout alone), or a test failure
    with their tail."""
    try:
        done = subprocess.run(
            [str(c) for c in cmd],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"{what}: timed out after {timeout}s\n{(output or '')[-6000:]}")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{what}: exit {done.returncode}\n{output[-6000:]}")
    return done.stdout if stdout_only else output


def last_json(out: str):
    """The JSON document on the last line of ``out`` that starts one: Airflow's CLI prints its
    warnings (no graphviz, ...) on stdout too."""
    lines = [line for line in out.splitlines() if line.startswith(("[", "{"))]
    assert lines, f"no JSON in: {out[-2000:]}"
    return json.loads(lines[-1])


def airflow_venv(timings: Timings) -> Path:
    """Airflow's own venv, installed once per requirements file and Python version."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("HYBRIDREC_AIRFLOW_CACHE") or Path.home() / ".cache/hybridrec")
    venv = cache / f"airflow-venv-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"airflow-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be installing it
        marker = venv / "installed-from"
        if marker.is_file() and marker.read_text() == key:  # written once the install succeeded
            timings.say(f"Airflow venv: reusing {venv}")
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        with timings.step(f"Airflow venv: install into {venv} (cold)"):
            run([sys.executable, "-m", "venv", venv], env=env, timeout=300, what="python -m venv")
            run(
                [venv / "bin/python", "-m", "pip", "install", "--quiet", "-r", REQUIREMENTS],
                env=env,
                timeout=1200,
                what=f"pip install -r {REQUIREMENTS.relative_to(REPO)} (Airflow venv)",
            )
        marker.write_text(key)
    return venv


def write_inputs(folder: Path, overlay: Path) -> dict[str, int]:
    """The built-in sample as CSV files in ``folder``: what a daily export would drop there."""
    frames = sample.generate(load_config([REPO / "conf/local.yaml", overlay]))
    folder.mkdir(parents=True)
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return {name: len(frame) for name, frame in frames.items()}


@pytest.fixture
def timings(capsys) -> Timings:
    return Timings(capsys)


def test_daily_dag_runs_the_logical_dates_partition_and_a_rerun_resumes_it(tmp_path, timings):
    started = time.perf_counter()
    project_bin = Path(sys.executable).parent
    assert (project_bin / "spark-submit").is_file(), f"no spark-submit in {project_bin}"
    venv = airflow_venv(timings)

    base_env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MLFLOW_TRACKING_URI",
            "MLFLOW_REGISTRY_URI",
            "VIRTUAL_ENV",
            "PYTHONPATH",
            "PYSPARK_PYTHON",
        )
        and not k.startswith(("AIRFLOW", "HYBRIDREC_"))
    }

    # The DAG's parse tests, where Airflow is installed (the repo's conftest files import
    # hybridrec, which this venv does not have).
    with timings.step("parse tests in the Airflow venv"):
        out = run(
            # -o addopts=: the project's addopts name xdist, which the Airflow venv has not.
            [venv / "bin/python", "-m", "pytest", "--noconftest", "-p", "no:cacheprovider"]
            + ["-o", "addopts="]
            + ["-q", "tests/integration/test_airflow_dag.py"],
            env=base_env,
            timeout=300,
            what="pytest tests/integration/test_airflow_dag.py in the Airflow venv",
        )
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, out[-3000:]

    work_dir = tmp_path / "work"
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(
        yaml.safe_dump({**fast_tiny_settings(), "run": {"work_dir": str(work_dir)}}),
        encoding="utf-8",
    )
    inputs = tmp_path / "exports"
    # Only the logical date's folder exists: a path not rendered from it would not be found.
    rows_in = write_inputs(inputs / f"dt={LOGICAL_DATE}", overlay)
    table_paths = ",".join(
        f"source.generic.{name}.path={inputs}/dt={{{{ ds }}}}/{name}.csv"
        for name in ("behaviour", "reviews", "items")
    )
    env = {
        **base_env,
        # The project venv first: its spark-submit wrapper must find the project's python.
        "PATH": os.pathsep.join([str(project_bin), str(venv / "bin"), base_env.get("PATH", "")]),
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "pipelines"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_LOCAL": SPARK_CONNECTION,
        "HYBRIDREC_SPARK_CONN_ID": "spark_local",
        "HYBRIDREC_PYTHON": sys.executable,
        "HYBRIDREC_CONF": f"conf/local.yaml,{overlay}",
        "HYBRIDREC_SET": f"source.kind=generic,source.generic.format=csv,{table_paths}",
        # A failing job should fail this test now, not after retries minutes apart.
        "HYBRIDREC_RETRIES": "0",
        # spark-submit starts each job's driver JVM before the job's settings are read.
        "JDK_JAVA_OPTIONS": SHORT_JOB_JAVA_OPTIONS,
    }
    airflow = venv / "bin/airflow"
    conf_args = ["--conf", REPO / "conf/local.yaml", "--conf", overlay]

    def dags_test(label: str, *extra: str) -> int:
        """``airflow dags test`` of the date, checking that every task of its DAG run
        succeeded and every job was submitted with RUN_ID; the number of jobs submitted."""
        with timings.step(f"airflow dags test hybridrec {LOGICAL_DATE} ({label})"):
            log = run(
                [airflow, "dags", "test", "hybridrec", LOGICAL_DATE, *extra],
                env=env,
                timeout=1500,
                what=f"airflow dags test ({label})",
            )
        submitted = [line for line in log.splitlines() if "Spark-Submit cmd:" in line]
        assert submitted and all(f"--run-id {RUN_ID} " in line for line in submitted), submitted
        runs = last_json(
            run(
                [airflow, "dags", "list-runs", "hybridrec", "-o", "json"],
                env=env,
                timeout=120,
                what="airflow dags list-runs",
                stdout_only=True,
            )
        )
        # dags test replaces an earlier DAG run of the same logical date: one run, another
        # Airflow run id, the same pipeline run id.
        assert [(r["logical_date"][:10], r["state"]) for r in runs] == [
            (LOGICAL_DATE, "success")
        ], runs
        states = last_json(
            run(
                [airflow, "tasks", "states-for-dag-run", "hybridrec", runs[0]["run_id"]]
                + ["-o", "json"],
                env=env,
                timeout=120,
                what="airflow tasks states-for-dag-run",
                stdout_only=True,
            )
        )
        assert {s["task_id"]: s["state"] for s in states} == dict.fromkeys(JOBS, "success")
        return len(submitted)

    def pipeline_run() -> dict:
        """The pipeline run's row in the runs table, and its rows in two tables, by SQL."""
        statement = (
            "SELECT r.status, r.attempt, r.started_at, r.stages_done, r.inputs, r.input_rows, "
            "(SELECT count(DISTINCT run_id) FROM hybridrec.runs) AS runs, "
            f"(SELECT count(*) FROM hybridrec.recommendations WHERE run_id = '{RUN_ID}') "
            "AS recommendations, "
            f"(SELECT count(*) FROM hybridrec.metrics WHERE run_id = '{RUN_ID}') AS metrics "
            f"FROM hybridrec.runs r WHERE r.run_id = '{RUN_ID}'"
        )
        with timings.step("hybridrec sql (runs, recommendations, metrics)"):
            out = run(
                [sys.executable, "-m", "pipelines.cli", "sql", statement, *conf_args]
                + ["--format", "json"],
                env=base_env,
                timeout=300,
                what="hybridrec sql",
                stdout_only=True,
            )
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(rows) == 1, f"not one runs row for {RUN_ID}: {out[-2000:]}"
        return rows[0]

    with timings.step("airflow db migrate"):
        run([airflow, "db", "migrate"], env=env, timeout=300, what="airflow db migrate")

    assert dags_test("first run") == len(JOBS)
    first = pipeline_run()
    assert first["status"] == "complete", first
    assert first["attempt"] == len(JOBS), first  # each spark-submit job is one attempt
    assert first["stages_done"].split(",") == list(JOBS_IN_ORDER)
    assert first["runs"] == 1, first
    assert first["recommendations"] > 0 and first["metrics"] > 0, first
    # The input partition came from the logical date, through the templated --set.
    recorded = json.loads(first["inputs"])
    for name in ("behaviour", "reviews", "items"):
        assert recorded[name] == f"{inputs}/dt={LOGICAL_DATE}/{name}.csv", recorded
    counted = json.loads(first["input_rows"])
    assert counted["behaviour_in"] == rows_in["behaviour"], counted
    assert counted["reviews_in"] == rows_in["reviews"], counted

    # The same date again, as when a failed evaluate task is cleared: evaluate runs again (the
    # rest marked success, to keep this test short) and resumes the same pipeline run,
    # replacing its snapshots rather than adding rows.
    assert dags_test("evaluate again", "--mark-success-pattern", RERUN_SKIPS) == 1
    again = pipeline_run()
    assert again["status"] == "complete", again
    assert again["attempt"] == len(JOBS) + 1, (first, again)
    assert again["started_at"] == first["started_at"], (first, again)
    assert again["stages_done"] == first["stages_done"], (first, again)
    assert again["runs"] == 1, again
    assert again["recommendations"] == first["recommendations"], (first, again)
    assert again["metrics"] == first["metrics"], (first, again)

    timings.say(f"whole test: {time.perf_counter() - started:.0f}s")
