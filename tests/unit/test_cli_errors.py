"""The real ``hybridrec`` command line on bad settings: one line on stderr naming the key, exit
status 2, and nothing written under the work dir (it failed before Spark started)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrec.ops import runner, session
from pipelines import cli

REPO = Path(__file__).resolve().parents[2]

# (case id, arguments after `run --conf conf/local.yaml --set run.work_dir=<tmp>`, named key)
CASES = [
    ("grid-rank-empty", ["--set", "als.grid.rank=[]"], "als.grid.rank"),
    ("event-weight-text", ["--set", "als.event_weights.click=abc"], "als.event_weights.click"),
    ("reg-param-negative", ["--set", "als.reg_param=-1"], "als.reg_param"),
    ("alpha-negative", ["--set", "als.alpha=-5"], "als.alpha"),
    ("min-above-max-rating", ["--set", "ingest.min_rating=6"], "ingest.min_rating"),
    ("unknown-stage", ["--stages", "ingest,scor"], "--stages"),
    ("database-with-space", ["--set", "run.database=bad name"], "run.database"),
    ("missing-model", ["--set", "embed.model_path=/nonexistent"], "embed.model_path"),
    ("run-id-with-space", ["--run-id", "a b"], "--run-id"),
    ("newline-in-value", ["--set", 'run.database="bad\\nname"'], "run.database"),
]
# The same checks through `hybridrec job <name>` (no --conf: base.yaml alone, as job_main does).
JOB_CASES = [("job-run-id-with-space", ["job", "score", "--run-id", "a b"], "--run-id")]


def _command(work: Path, case: str, args: list[str]) -> list[str]:
    work_dir = ["--set", f"run.work_dir={work}"]
    if case.startswith("job-"):
        return [sys.executable, "-m", "pipelines.cli", *args, *work_dir]
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        "--conf",
        "conf/local.yaml",
        *work_dir,
        *args,
    ]


@pytest.fixture(scope="module")
def cli_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case's process, started at once: each pays the CLI's imports (seconds), never Spark."""
    env = {**os.environ}
    env.pop("HYBRIDREC_CONF_DIR", None)
    started = {}
    for case, args, _ in CASES + JOB_CASES:
        folder = tmp_path_factory.mktemp(case)
        process = subprocess.Popen(
            _command(folder / "work", case, args),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[case] = (folder, process)
    results = {}
    for case, (folder, process) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        results[case] = (folder, done)
    return results


@pytest.mark.parametrize(("case", "key"), [(case, key) for case, _, key in CASES + JOB_CASES])
def test_bad_setting_fails_before_spark_with_one_line(cli_results, case, key):
    folder, result = cli_results[case]

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hybridrec: config error: ")
    assert key in lines[0]
    # Spark never started: no work dir, so no warehouse, checkpoints, metastore or mlflow.db.
    assert list(folder.iterdir()) == []


def test_set_error_names_the_set_that_made_it(cli_results):
    _, result = cli_results["reg-param-negative"]

    assert result.stderr.strip() == (
        "hybridrec: config error: als.reg_param = -1.0 (from --set als.reg_param=-1) must be >= 0"
    )


def test_newline_in_a_value_stays_on_one_line(cli_results):
    _, result = cli_results["newline-in-value"]

    assert "run.database = 'bad\\nname'" in result.stderr


def test_gpu_conf_in_local_mode_is_dropped_with_a_warning_not_left_to_hang(tmp_path):
    # Local mode gives tasks no GPU: with conf/gpu.yaml's task amount every task would wait
    # forever. A query (or a run) on the same config must answer.
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDREC_CONF_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sql", "--conf", "conf/local.yaml"]
        + ["--conf", "conf/gpu.yaml", "--set", f"run.work_dir={tmp_path / 'work'}"]
        + ["SELECT 41 + 1 AS answer", "--format", "csv", "--engine", "spark"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["answer", "42"]
    assert "spark.task.resource.gpu.amount ignored: local Spark (local[*])" in done.stderr


def test_gpu_task_resources_given_to_a_local_spark_submit_fail_at_start(tmp_path):
    # The same mistake made on spark-submit's command line cannot be dropped: it fails, at once.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "MLFLOW"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]"]
        + ["--conf", "spark.executor.resource.gpu.amount=1"]
        + ["--conf", "spark.task.resource.gpu.amount=1", str(REPO / "jobs" / "ingest.py")]
        + ["--conf", str(REPO / "conf/local.yaml"), "--set", f"run.work_dir={tmp_path / 'w'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    # spark-submit's JVM passes the Python driver's stderr on as its own stdout.
    (line,) = re.findall(r"hybridrec: config error: .*", done.stdout)
    assert "spark.task.resource.gpu.amount=1 with master local[1]" in line
    assert "wait forever" in line


# --- an empty value (an unset shell variable, an empty Airflow template) fails, in-process --------


@pytest.fixture
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark starting is a test failure here, not a pipeline run in the test's folder."""

    def refuse(cfg):
        raise AssertionError("Spark started: the setting got past load_config")

    # The run command imports get_spark from hybridrec.ops.session when it runs.
    for module in (session, runner):
        monkeypatch.setattr(module, "get_spark", refuse)
    for module in (cli, runner):
        monkeypatch.setattr(module, "setup_logging", lambda: None)
        monkeypatch.setattr(module, "protect_secrets", lambda cfg: None)
    monkeypatch.delenv("HYBRIDREC_CONF_DIR", raising=False)


def _dag_job_args(hybridrec_set: str) -> list[str]:
    """The arguments an Airflow task gives its job for a rendered ``HYBRIDREC_SET``, split at
    the commas that start the next key=value as pipelines/airflow_dag.py splits it."""
    items = [i.strip() for i in re.split(r",(?=\s*[\w.]+=)", hybridrec_set) if i.strip()]
    sets = [flag for item in items for flag in ("--set", item)]
    return ["job", "ingest", "--conf", "conf/local.yaml", *sets, "--run-id", "d20261123"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "--set", "run.work_dir="], "--set run.work_dir="),
        (["run", "--set", "als.rank="], "--set als.rank="),
        (["run", "--set", "run.warehouse_dir= "], "--set run.warehouse_dir= "),
        (["job", "als", "--set", "run.work_dir=", "--run-id", "r1"], "--set run.work_dir="),
        (_dag_job_args("run.work_dir="), "--set run.work_dir="),
        (_dag_job_args("run.work_dir=/data/hr,als.rank=,als.max_iter=3"), "--set als.rank="),
    ],
)
def test_empty_set_value_exits_2_naming_key_and_set_before_any_folder(
    tmp_path, monkeypatch, capsys, no_spark, argv, named
):
    monkeypatch.chdir(tmp_path)

    status = cli.main(argv)

    lines = capsys.readouterr().err.splitlines()
    assert status == 2
    assert len(lines) == 1
    key = named.removeprefix("--set ").partition("=")[0]
    assert lines[0].startswith(f"hybridrec: config error: '{key}' in {named} is empty")
    assert list(tmp_path.iterdir()) == []  # no ./work: no warehouse, metastore or mlflow.db


def test_empty_work_dir_error_line(tmp_path, monkeypatch, capsys, no_spark):
    monkeypatch.chdir(tmp_path)

    assert cli.main(["run", "--set", "run.work_dir="]) == 2
    assert capsys.readouterr().err == (
        "hybridrec: config error: 'run.work_dir' in --set run.work_dir= is empty "
        "(an unset variable or template?): give a value (str), or leave the --set out\n"
    )


def test_duplicate_key_in_an_overlay_exits_2_naming_file_and_line(
    tmp_path, monkeypatch, capsys, no_spark
):
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "prod.yaml"
    overlay.write_text("run:\n  work_dir: /data/hr\nals:\n  rank: 64\nrun:\n  keep_runs: 3\n")

    assert cli.main(["run", "--conf", str(overlay)]) == 2
    assert capsys.readouterr().err == (
        f"hybridrec: config error: config file {overlay} line 5: key 'run' is given twice "
        "(first at line 1); YAML would keep only the last\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.yaml"]
