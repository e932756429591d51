"""No secret leaves the process in clear: a password in the MLflow URI (a real tracking server
over HTTP) and an S3 secret key in ``spark.conf`` appear in no MLflow param or tag, no log line
and no table; nor in the one line (exit status 6) of a tracking server that cannot be reached."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hybridrec.config.loader import load_config
from hybridrec.ops.session import SHORT_RUN_SETTINGS
from hybridrec.store.tables import Warehouse

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter22-Pa55"
S3_SECRET = "wJalrXUtnFEMI-K7MDENG"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root", str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not answer /health in 120 s")
    yield port
    server.terminate()
    server.wait(timeout=30)


def test_secrets_are_in_no_param_log_or_table(tracking_server, tmp_path, spark):
    uri = f"http://analyst:{PASSWORD}@127.0.0.1:{tracking_server}"
    settings = [
        f"run.work_dir={tmp_path}",
        f"mlflow.tracking_uri={uri}",
        f"spark.conf.spark.hadoop.fs.s3a.secret.key={S3_SECRET}",
        "source.sample.n_users=40",
        "source.sample.n_items=30",
        "spark.master=local[2]",
        *SHORT_RUN_SETTINGS,
    ]
    command = [sys.executable, "-m", "pipelines.cli", "run", "--conf", "conf/local.yaml"]
    for setting in settings:
        command += ["--set", setting]
    done = subprocess.run(
        [*command, "--stages", "ingest", "--run-id", "S1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "wrote hybridrec.interactions" in output  # the log was captured
    assert PASSWORD not in output
    assert S3_SECRET not in output

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{tracking_server}")
    runs = client.search_runs([client.get_experiment_by_name("hybridrec").experiment_id])
    assert runs
    for run in runs:
        recorded = " ".join(
            [*run.data.params.values(), *run.data.tags.values(), *run.data.params.keys()]
        )
        assert PASSWORD not in recorded
        assert S3_SECRET not in recorded
    parent = next(r for r in runs if r.data.tags.get("hybridrec.role") == "pipeline")
    assert parent.data.tags["setting.spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"

    warehouse = Warehouse.from_config(spark, load_config([], [f"run.work_dir={tmp_path}"]), "S1")
    for table in warehouse.tables():
        for row in warehouse.read(table).collect():
            text = str(row.asDict())
            assert PASSWORD not in text, table
            assert S3_SECRET not in text, table


def test_an_unreachable_tracking_server_is_one_line_without_its_password(tmp_path):
    uri = f"http://analyst:{PASSWORD}@127.0.0.1:{_free_port()}/"  # nothing listens there
    command = [sys.executable, "-m", "pipelines.cli", "run", "--conf", "conf/local.yaml"]
    command += ["--set", f"run.work_dir={tmp_path}", "--set", f"mlflow.tracking_uri={uri}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    output = done.stdout + done.stderr
    assert done.returncode == 6, output[-3000:]
    assert PASSWORD not in output
    (line,) = done.stderr.splitlines()
    assert line.startswith("hybridrec: MLflow tracking server http://***@127.0.0.1:"), line
    assert "mlflow.tracking_uri" in line
    assert not (tmp_path / "metastore").exists()  # refused before Spark started
