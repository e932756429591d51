"""The pipeline on a real Spark standalone cluster whose worker behaves as a second host.

A master and a worker start from pyspark's own scripts on 127.0.0.1. The worker runs in its own
mount namespace (``unshare -m``, as root): the checkout (with the driver's venv and its
site-packages), the driver's temp folder and the folder holding the packed environment are
covered by empty tmpfs mounts there, so any path that exists only on the driver's host fails on
the executors as it would on a second machine. The worker's Spark is pyspark's folder bind-mounted
at another path (a node's own Spark install); the base Python that the packed venv links to stays
visible, as the same OS image on every node would have it. Only ``shared/`` (warehouse,
checkpoints, metastore, MLflow store) is seen by both, as HDFS or NFS would be.

The pipeline goes in as one application (``pipelines/cli.py run``) with exactly the README's flags:
``hybridrec pack``'s environment and code archive, ``conf/gpu.yaml``, and a discovery script on the
worker that reports two fake GPUs. Then: tables and the run are complete; the executors ran the
shipped Python, not the driver's; every embed task got its own GPU address and fell back to the CPU
with a warning (no CUDA here), and under ``embed.device: cuda`` a task fails; the ALS model, loaded
back from MLflow, scores real ids.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

RUN_ID = "cluster-run"
JOBS = ["ingest", "embed", "topics", "als", "score", "evaluate"]
FAKE_GPUS = ["0", "1"]
PYSPARK_HOME = Path(__import__("pyspark").__file__).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: int = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {seconds}s: {log.read_text()[-3000:]}")


def _wait_for_worker(master_log: Path, process: subprocess.Popen, seconds: int = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if "Registering worker" in master_log.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited {process.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"no worker registered in {seconds}s: {master_log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _hidden_from_worker(driver_tmp: Path) -> list[Path]:
    """The driver host's own folders: the checkout (its venv, and the code the driver runs), the
    interpreter prefix if it lives elsewhere, and the driver's temp folder."""
    folders = [REPO, Path(sys.prefix).resolve(), driver_tmp]
    return [f for f in folders if f == REPO or not f.is_relative_to(REPO)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the cluster test isolates its worker with `unshare -m`, which needs root")
    root = tmp_path_factory.mktemp("cluster")
    node, shared, driver_tmp = root / "node", root / "shared", root / "driver-tmp"
    for folder in (node / "spark", node / "work", node / "local", shared, driver_tmp):
        folder.mkdir(parents=True)
    # The discovery script lives on the node, as an operator installs it; it reports fake GPUs.
    discovery = node / "fake_gpus.sh"
    discovery.write_text(
        "#!/bin/sh\necho '" + json.dumps({"name": "gpu", "addresses": FAKE_GPUS}) + "'\n"
    )
    discovery.chmod(0o755)

    port, ui_port, worker_ui = _free_port(), _free_port(), _free_port()
    master_log, worker_log = root / "master.log", root / "worker.log"
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK", "SPARK", "VIRTUAL_ENV", "MLFLOW", "PYTHON"))
    }
    base_env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    spark_class = PYSPARK_HOME / "bin" / "spark-class"
    master = subprocess.Popen(
        [str(spark_class), "org.apache.spark.deploy.master.Master"]
        + ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
        env={**base_env, "SPARK_HOME": str(PYSPARK_HOME)},
        stdout=master_log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = None
    try:
        _wait_for_port(port, master, master_log)
        hide = " ".join(shlex.quote(str(f)) for f in _hidden_from_worker(driver_tmp))
        node_spark = shlex.quote(str(node / "spark"))
        script = (
            "set -e\n"
            f"mount --bind {shlex.quote(str(PYSPARK_HOME))} {node_spark}\n"
            f'for folder in {hide}; do mount -t tmpfs -o size=1m hidden "$folder"; done\n'
            f"exec {node_spark}/bin/spark-class org.apache.spark.deploy.worker.Worker "
            f"spark://127.0.0.1:{port} --host 127.0.0.1 --cores 2 --memory 3g "
            f"--webui-port {worker_ui} --work-dir {shlex.quote(str(node / 'work'))}\n"
        )
        worker = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
            env={
                **base_env,
                "SPARK_HOME": str(node / "spark"),
                "SPARK_LOCAL_DIRS": str(node / "local"),
                "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount={len(FAKE_GPUS)} "
                f"-Dspark.worker.resource.gpu.discoveryScript={discovery}",
            },
            stdout=worker_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_for_worker(master_log, worker)
        yield {
            "master": f"spark://127.0.0.1:{port}",
            "root": root,
            "node": node,
            "shared": shared,
            "driver_tmp": driver_tmp,
            "worker_log": worker_log,
        }
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)


@pytest.fixture(scope="module")
def flags(packed_env) -> list[str]:
    """The README's ``$(hybridrec pack --out dist --print-flags)``, for the session's pack output
    (in the checkout, hidden from the worker)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hybridrec"), "pack", "--print-flags"]
        + ["--out", str(packed_env.env_archive.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.split()
    # The same flags as the session's build; the driver's python may be named by another link.
    assert printed[:-1] == packed_env.flags[:-1]
    driver_python = printed[-1].removeprefix("spark.pyspark.driver.python=")
    assert Path(driver_python).resolve() == Path(sys.executable).resolve()
    return printed


def _driver_env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "PYSPARK"))}
    env["TMPDIR"] = str(cluster["driver_tmp"])
    # As in an activated venv: pip's spark-submit finds Spark through the python3 on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _submit(cluster, flags, application: str, args: list[str], extra: list[str] = ()):
    spark_submit = Path(sys.executable).parent / "spark-submit"
    command = [
        str(spark_submit),
        "--master",
        cluster["master"],
        *flags,
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        f"spark.local.dir={cluster['driver_tmp']}",
        *extra,
        application,
        *args,
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=cluster["driver_tmp"],
        env=_driver_env(cluster),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def cluster_run(cluster, flags, tiny_settings):
    """The whole pipeline as one application (``pipelines/cli.py run``): the six stages on the
    cluster, each executor unpacking the environment once rather than once per job. Each job
    alone under spark-submit runs the same stages (``runner.run_stages``); the Airflow test
    submits them one by one."""
    overlay = cluster["root"] / "cluster.yaml"
    settings = {k: v for k, v in tiny_settings.items() if k != "spark"}
    settings["run"] = {"work_dir": str(cluster["shared"] / "work")}
    overlay.write_text(yaml.safe_dump(settings), encoding="utf-8")
    conf = ["--conf", "conf/local.yaml", "--conf", str(overlay), "--conf", "conf/gpu.yaml"]
    # Two GPUs per executor, one per task: the executor's two cores run two tasks at once.
    conf += ["--set", "spark.conf.spark.executor.resource.gpu.amount=2"]
    done, seconds = _submit(
        cluster,
        flags,
        str(REPO / "pipelines" / "cli.py"),
        ["run", *conf_paths(conf), "--run-id", RUN_ID],
    )
    (cluster["root"] / "pipeline.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    assert done.returncode == 0, _not_spark_info(done.stderr)[-6000:]
    stages = re.findall(r"stage (\w+): done in", done.stdout + done.stderr)
    assert stages == JOBS, _not_spark_info(done.stderr)[-6000:]
    print(f"the pipeline on the cluster: {seconds:.0f} s")
    return {"conf": conf_paths(conf), "seconds": seconds}


def _not_spark_info(log: str) -> str:
    """The driver's own lines (our logs, tracebacks), without Spark's INFO chatter."""
    spark_info = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ")
    return "\n".join(line for line in log.splitlines() if not spark_info.match(line))


def conf_paths(args: list[str]) -> list[str]:
    """The README's relative conf paths made absolute: the driver runs from its temp folder."""
    return [str(REPO / a) if a.startswith("conf/") else a for a in args]


def _executor_logs(cluster) -> str:
    return "\n".join(
        p.read_text(errors="replace") for p in sorted((cluster["node"] / "work").rglob("stderr"))
    )


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """This venv's python in a new process, without a tracking URI an earlier run exported."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _sql(cluster_run, statement: str) -> list[dict]:
    done = _python(
        ["-m", "pipelines.cli", "sql", *cluster_run["conf"], statement, "--format", "json"], REPO
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_the_six_stages_complete_one_run_on_the_cluster(cluster_run):
    runs = _sql(cluster_run, f"SELECT status FROM hybridrec.runs WHERE run_id = '{RUN_ID}'")
    assert [r["status"] for r in runs] == ["complete"]
    counts = _sql(
        cluster_run,
        "SELECT (SELECT count(*) FROM hybridrec.recommendations_latest) AS recommendations, "
        "(SELECT count(*) FROM hybridrec.metrics_latest) AS metrics, "
        "(SELECT count(*) FROM hybridrec.text_embeddings_latest) AS vectors",
    )[0]
    assert counts["recommendations"] > 0 and counts["metrics"] > 0 and counts["vectors"] > 0


def test_every_embed_task_got_its_own_fake_gpu_and_fell_back_to_cpu(cluster, cluster_run):
    logs = _executor_logs(cluster)
    assigned = re.findall(
        r"embed task stage \d+ partition (\d+) attempt \d+ \(pid \d+\): Spark assigned GPU "
        r"address (\S+) but torch \S+ sees no CUDA device on this worker; encoding on the CPU",
        logs,
    )
    assert assigned, logs[-3000:]
    addresses = [address for _, address in assigned]
    # One address per task (never both), from the discovery script, and both GPUs in use.
    assert set(addresses) == set(FAKE_GPUS)


def test_executors_ran_the_shipped_python_and_cuda_mode_fails(cluster, flags, cluster_run):
    probe = cluster["driver_tmp"] / "probe.py"
    probe.write_text(
        PROBE.replace("DRIVER_PREFIX", repr(str(Path(sys.prefix).resolve()))), encoding="utf-8"
    )
    done, _ = _submit(
        cluster,
        flags,
        str(probe),
        [],
        [
            "--conf",
            "spark.executor.resource.gpu.amount=2",
            "--conf",
            "spark.task.resource.gpu.amount=1",
            "--conf",
            "spark.task.maxFailures=1",
        ],
    )
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    work = str(cluster["node"] / "work")
    for facts in report["facts"]:
        # The interpreter is ./env/bin/python of the unpacked archive in the executor's folder.
        assert facts["executable"].startswith(work) and "/env/bin/python" in facts["executable"]
        assert facts["prefix"].startswith(work)
        assert not facts["driver_prefix_visible"]
        assert facts["model"].startswith(work)
        assert facts["gpu"] in FAKE_GPUS
    assert "embed.device is cuda, so the task fails" in report["cuda_failure"]


def test_the_logged_als_model_scores_real_ids(cluster_run, tmp_path):
    script = LOAD_MODEL.replace("CONF", repr(cluster_run["conf"])).replace("RUN_ID", repr(RUN_ID))
    scored = json.loads(_python(["-c", script], tmp_path).stdout.strip().splitlines()[-1])
    assert scored["known"] > 0
    assert scored["finite"] == scored["known"]


PROBE = """
import json, os, sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("hybridrec-cluster-probe").getOrCreate()


def facts(_):
    from udfs.encoder import bundled_model_path, task_gpu_addresses
    yield {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "driver_prefix_visible": os.path.exists(DRIVER_PREFIX),
        "model": bundled_model_path(),
        "gpu": ",".join(task_gpu_addresses()),
    }


found = spark.sparkContext.parallelize(range(2), 2).mapPartitions(facts).collect()

from udfs.embedding_udf import encode_texts_udf

encode = encode_texts_udf(model_path=None, device="cuda", max_length=16, batch_size=4)
try:
    spark.createDataFrame([("a text",)], ["text"]).select(encode("text")).collect()
    failure = ""
except Exception as exc:
    failure = str(exc)
print(json.dumps({"facts": found, "cuda_failure": failure}))
"""

LOAD_MODEL = """
import json, math
import mlflow.spark
from hybridrec.config.loader import load_config
from hybridrec.ops.session import get_spark
from hybridrec.ops.tracking import pipeline_run_id

args = CONF
cfg = load_config(
    [args[i + 1] for i, a in enumerate(args) if a == "--conf"],
    [args[i + 1] for i, a in enumerate(args) if a == "--set"],
)
spark = get_spark(cfg)
model = mlflow.spark.load_model(f"runs:/{pipeline_run_id(cfg, RUN_ID)}/als_model")
pairs = spark.table("hybridrec.interactions").where(f"run_id = '{RUN_ID}'")
pairs = pairs.select("user_id", "item_id").limit(20)
scores = [r["prediction"] for r in model.transform(pairs).collect()]
print(json.dumps({"known": len(scores), "finite": sum(math.isfinite(s) for s in scores)}))
"""
