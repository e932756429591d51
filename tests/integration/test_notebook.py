"""The analyst notebook runs as is, headless, from the repository root and from its own folder,
against the run the CLI made, and shows what it promises (tables and figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"


def _execute(analyst_run, cwd: Path, path: str, out: Path) -> dict:
    done = subprocess.run(
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
        env=analyst_run.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / NOTEBOOK.name).read_text(encoding="utf-8"))


def _outputs(notebook: dict) -> tuple[str, int]:
    texts, images = [], 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts.append("".join(output.get("text", "")) + "".join(data.get("text/plain", "")))
            images += "image/png" in data
    return "\n".join(texts), images


@pytest.mark.parametrize("where", ["repository root", "notebooks folder"])
def test_the_notebook_runs_as_is(analyst_run, tmp_path, where):
    cwd, path = (REPO, "notebooks/explore_run.ipynb")
    if where == "notebooks folder":
        cwd, path = (NOTEBOOK.parent, NOTEBOOK.name)

    executed = _execute(analyst_run, cwd, path, tmp_path)

    text, images = _outputs(executed)
    assert f"run {analyst_run.run_id}" in text
    assert "hybrid" in text and "popularity" in text
    assert "similar to" in text or "often had with" in text  # the reasons of one user
    assert images >= 4  # metrics and gaps, segments, beyond accuracy, rejects
    assert not any(
        o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", [])
    )
    assert not list(NOTEBOOK.parent.glob("*.nbconvert.ipynb"))
