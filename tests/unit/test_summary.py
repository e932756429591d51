"""The end-of-run summary: headline numbers an operator can read, commands they can paste."""

from __future__ import annotations

import shlex

import pandas as pd

from hybridrec import summary
from hybridrec.config import load_config


def test_headline_shows_each_model_and_says_which_gaps_are_ties():
    metrics = pd.DataFrame(
        [
            (m, metric, 10, v)
            for m, v in (("hybrid", 0.2), ("als", 0.1))
            for metric in ("ndcg", "hr")
        ],
        columns=["model", "metric", "k", "value"],
    )
    gaps = pd.DataFrame(
        [("als", "ndcg", 0.1, 0.05, 0.15, 0.001), ("als", "hr", 0.01, -0.02, 0.04, 0.4)],
        columns=["model", "metric", "difference", "ci_low", "ci_high", "p_value"],
    )

    lines = summary.format_headline(metrics, gaps, 0.95)

    text = "\n".join(lines)
    assert "ndcg@10" in lines[1] and "hr@10" in lines[1]
    assert [ln.split()[0] for ln in lines[2:4]] == ["hybrid", "als"]  # model order, not a-z
    assert "ndcg@10  vs als        +0.1000 [+0.0500, +0.1500] p=0.001 (better)" in text
    assert "hr@10    vs als        +0.0100 [-0.0200, +0.0400] p=0.400 (tie)" in text


def test_commands_carry_the_runs_files_and_location_settings_but_no_secret(tmp_path):
    overlay = tmp_path / "my conf.yaml"
    overlay.write_text("run:\n  work_dir: w\n")
    cfg = load_config(
        [overlay],
        [
            f"run.work_dir={tmp_path}/work",
            "mlflow.tracking_uri=postgresql://bob:hunter2@db/mlflow",
            "als.rank=8",
        ],
    )

    args = summary.config_args(cfg)

    assert args[:2] == ["--conf", str(overlay)]
    assert f"run.work_dir={tmp_path}/work" in args
    assert "als.rank=8" not in args  # results settings do not locate anything
    assert "hunter2" not in " ".join(args)
    assert shlex.split(shlex.join(args)) == args
