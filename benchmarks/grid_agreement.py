"""Does validation order the weight grid as test does? Measured after a quality run.

    python benchmarks/quality.py FOLDER ... --work /tmp/hybridrec-quality
    python benchmarks/grid_agreement.py FOLDER ... --work /tmp/hybridrec-quality

For each data set folder (the arguments quality.py took; its newest run with fusion weights),
every point of the score job's weight grid (``score.weight_grid_step``) at each sharpness of
``score.recent_sharpness_grid`` is scored twice, with the tuner the score job picks with: on
validation (the validation fold's models and targets, where the pick is made) and on test (the
test fold's models and targets). Test is only read here, for this diagnostic; nothing is picked
on it. It prints per data set: the users scored on each, the Spearman rank correlation of the
points' validation and test NDCG (per sharpness and over all points), the test NDCG of the
point validation ranks first against the test-best point and the grid's mean, and the place on
test of validation's first point.

A picking rule that survives noise should raise the correlation; the score job's pick (with the
``next`` share and re-rank after the grid) is not re-made here, only the grid is compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import measured_runs  # noqa: E402

from hybridrec.config.loader import Config  # noqa: E402
from hybridrec.constants import TEST, VALIDATION  # noqa: E402
from hybridrec.ops.runner import setup_logging  # noqa: E402
from hybridrec.ranking import rank  # noqa: E402
from hybridrec.store.tables import Warehouse  # noqa: E402
from udfs.ranking_kernel import weight_grid  # noqa: E402


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Pearson's correlation of the average ranks (ties share a rank)."""
    return float(a.rank().corr(b.rank()))


def grid_scores(warehouse: Warehouse, cfg: Config) -> pd.DataFrame:
    """One row per (sharpness, grid point): its validation and test NDCG and users."""
    grid = weight_grid(cfg.score.weight_grid_step)
    mode = rank.ranking_mode(warehouse, cfg)
    scored = {}
    for fold in (VALIDATION, TEST):
        frames = []
        with rank.fold_tuner(warehouse, cfg, mode, grid, fold) as tune:
            for sharpness in cfg.score.recent_sharpness_grid:
                frames.append(tune(float(sharpness)).assign(recent_sharpness=float(sharpness)))
        scored[fold] = pd.concat(frames, ignore_index=True)[
            ["recent_sharpness", "combo", cfg.score.tune_metric, "users"]
        ]
    return scored[VALIDATION].merge(
        scored[TEST], on=["recent_sharpness", "combo"], suffixes=("_validation", "_test")
    )


def agreement(scores: pd.DataFrame, metric: str) -> dict[str, float]:
    validation, test = scores[f"{metric}_validation"], scores[f"{metric}_test"]
    # validation's first point, ties to the earlier sharpness and point as the score job breaks them
    first = scores.sort_values(
        [f"{metric}_validation", "recent_sharpness", "combo"], ascending=[False, True, True]
    ).iloc[0]
    row = {
        "points": len(scores),
        "validation users": int(scores["users_validation"].iloc[0]),
        "test users": int(scores["users_test"].iloc[0]),
        "spearman": spearman(validation, test),
    }
    for sharpness, group in scores.groupby("recent_sharpness"):
        row[f"spearman at {sharpness:g}"] = spearman(
            group[f"{metric}_validation"], group[f"{metric}_test"]
        )
    row |= {
        "pick's test": first[f"{metric}_test"],
        "best test": test.max(),
        "mean test": test.mean(),
        "pick's place on test": int((test > first[f"{metric}_test"]).sum()) + 1,
    }
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-quality"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    rows = []
    for folder, cfg, _, warehouse in measured_runs(args.folders, args.work, args.set):
        scores = grid_scores(warehouse, cfg)
        scores.to_csv(args.work / f"{folder.name}-grid.csv", index=False)
        rows.append({"data set": folder.name, **agreement(scores, cfg.score.tune_metric)})
    table = pd.DataFrame(rows).set_index("data set").T
    print(f"\nthe weight grid on validation and test ({cfg.score.tune_metric}@{cfg.score.k})")
    print(table.to_string(float_format="%.4f"))


if __name__ == "__main__":
    main(sys.argv[1:])
