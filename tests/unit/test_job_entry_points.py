"""``python -m jobs.<job>`` (what spark-submit runs) fails like ``hybridrec`` does: one line
naming the key, exit status 2, before Spark starts and before any table is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("job", "setting", "key"),
    [
        ("als", "als.reg_param=-1", "als.reg_param"),
        ("ingest", "ingest.min_rating=6", "ingest.min_rating"),
        ("embed", "embed.model_path=/nonexistent/model", "embed.model_path"),
    ],
)
def test_a_job_module_reports_a_config_error_in_one_line(tmp_path, job, setting, key):
    done = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", "--conf", "conf/local.yaml",
         "--set", f"run.work_dir={tmp_path}", "--set", setting],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
