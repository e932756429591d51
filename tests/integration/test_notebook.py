"""The analyst notebook runs as is, headless, from the repository root and from its own folder,
on the venv's interpreter, against the run the CLI made, and shows what it promises (tables and
figures); with no complete run it stops with one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hybridrec.constants import MODELS
from udfs.ranking_kernel import PARTS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"


def _env(base: dict[str, str]) -> dict[str, str]:
    """The kernel must be this interpreter: the ``python3`` kernelspec ipykernel installs in the
    venv runs ``python``, which jupyter_client replaces with nbconvert's own interpreter. A
    user-level or JUPYTER_PATH kernelspec named ``python3`` must not win over it."""
    env = {k: v for k, v in base.items() if k != "JUPYTER_PATH"}
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    return env


def _nbconvert(env: dict[str, str], cwd: Path, path: str, out: Path):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            path,
            "--output-dir",
            str(out),
            "--ExecutePreprocessor.timeout=600",
        ],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        parts.append("".join(output.get("text", "")) + "".join(data.get("text/plain", "")))
    return "\n".join(parts)


def _cell(notebook: dict, marker: str) -> dict:
    """The one code cell whose source holds ``marker``."""
    (cell,) = [
        c for c in notebook["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"])
    ]
    return cell


def test_the_notebook_runs_as_is(analyst_run, tmp_path):
    # From the notebooks folder, where Jupyter starts its kernel; that it finds the checkout from
    # the repository root as well is tests/unit/test_notebook_support.py's.
    cwd, path = (NOTEBOOK.parent, NOTEBOOK.name)
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())

    done = _nbconvert(analyst_run.env(), cwd, path, tmp_path)

    assert done.returncode == 0, done.stderr[-4000:]
    executed = json.loads((tmp_path / NOTEBOOK.name).read_text(encoding="utf-8"))
    cells = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert not any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    assert all(c.get("execution_count") for c in cells)  # every cell ran

    opening = _text(cells[0])
    assert f"run {analyst_run.run_id} " in opening
    assert f"work dir {analyst_run.work_dir.resolve()}" in opening  # the run's, not the checkout's
    # The kernel is an interpreter of this venv (python or python3 in the same bin folder).
    (kernel_python,) = re.findall(r"^Spark \S+, Python (\S+)$", opening, re.M)
    assert Path(kernel_python).parent.resolve() == Path(sys.executable).parent.resolve()
    assert "complete" in opening  # the runs table

    # Every model the run evaluated, the closest baselines included, from the tables.
    metrics = _text(_cell(executed, "metrics_latest"))
    for model in MODELS:
        assert model in metrics

    # The user shown is the smallest user id with recommendations, read here without Spark.
    recommendations = pd.read_parquet(
        analyst_run.work_dir
        / "warehouse"
        / "hybridrec.db"
        / "recommendations"
        / f"run_id={analyst_run.run_id}"
    )
    user = recommendations.user_id.min()
    history = _text(_cell(executed, "substr(t.review_text"))
    assert f"user {user}\n" in history
    reasons = _text(_cell(executed, "reason_item_title"))
    assert "similar to" in reasons or "often had with" in reasons
    for item in recommendations[recommendations.user_id == user].item_id:
        assert item in reasons
    assert all(part in reasons for part in PARTS)  # every part of the score, named by the table

    # The topics, named by words from the run's own table, and the user with the most events.
    topics = pd.read_parquet(
        analyst_run.work_dir
        / "warehouse"
        / "hybridrec.db"
        / "topics"
        / f"run_id={analyst_run.run_id}"
    )
    sizes = _text(_cell(executed, "Topic sizes"))
    assert all(label in sizes for label in topics.label)
    interests = pd.read_parquet(
        analyst_run.work_dir
        / "warehouse"
        / "hybridrec.db"
        / "user_interests"
        / f"run_id={analyst_run.run_id}"
    ).sort_values(["events", "user_id"], ascending=[False, True])
    assert interests.user_id.iloc[0] in _text(_cell(executed, "topics per month"))
    for marker in ("Topic sizes", "principal components", "topics per month"):
        assert any("image/png" in o.get("data", {}) for o in _cell(executed, marker)["outputs"])

    images = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    # metrics and gaps, segments, beyond accuracy, topic sizes, the topic map, one user's
    # interests over time, rejects
    assert images >= 7
    rejects = _cell(executed, "rejects_latest")
    assert "records" in _text(rejects)  # the sample's bad rows, counted by reason
    assert any("image/png" in o.get("data", {}) for o in rejects["outputs"])

    # nbconvert wrote only to --output-dir; the checkout's notebooks folder is as it was.
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before


def test_without_a_complete_run_the_notebook_says_so(tmp_path):
    overlay = tmp_path / "empty.yaml"
    overlay.write_text(
        yaml.safe_dump({"run": {"work_dir": str(tmp_path / "work")}}), encoding="utf-8"
    )
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        },
        "HYBRIDREC_ARGS": f"--conf {REPO / 'conf/local.yaml'} --conf {overlay}",
    }

    done = _nbconvert(env, NOTEBOOK.parent, NOTEBOOK.name, tmp_path / "out")

    assert done.returncode != 0
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr)  # IPython colours its tracebacks
    warehouse = tmp_path / "work" / "warehouse" / "hybridrec.db"
    assert f"NoCompleteRun: no complete run in {warehouse}: run `hybridrec run" in stderr
    assert "Py4JJavaError" not in stderr and "AnalysisException" not in stderr
