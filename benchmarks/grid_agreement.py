"""Does validation order the weight grid as test does? Measured after a quality run.

    python benchmarks/quality.py FOLDER ... --work /tmp/hybridrec-quality
    python benchmarks/grid_agreement.py FOLDER ... --work /tmp/hybridrec-quality

For each data set folder (the arguments quality.py took; its newest run with fusion weights),
every point of the score job's weight grid (``score.weight_grid_step``) at each sharpness of
``score.recent_sharpness_grid`` is scored with the tuner the score job picks with, by each
judge: ``validation`` (the validation fold's models and targets alone), ``pooled`` (those and the
early fold's, as the score job picks where the run fitted the early fold) and ``test`` (the test
fold's models and targets). Test is only read here, for this diagnostic; nothing is picked on it.
It prints per data set and judge: the users it scored, the Spearman rank correlation of the
points' NDCG by that judge and by test (per sharpness and over all points), the test NDCG of the
judge's first point against the test-best point and the grid's mean, and that point's place on
test.

More users judging should raise the correlation; the score job's pick (with the ``next`` share,
the re-rank and the noise-aware choice after the grid) is not re-made here, only the grid is
compared.
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
from hybridrec.ranking import rank, tuning  # noqa: E402
from hybridrec.store.tables import Warehouse  # noqa: E402
from udfs.ranking_kernel import weight_grid  # noqa: E402

POOLED = "pooled"


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Pearson's correlation of the average ranks (ties share a rank)."""
    return float(a.rank().corr(b.rank()))


def grid_scores(warehouse: Warehouse, cfg: Config) -> pd.DataFrame:
    """One row per (sharpness, grid point): its NDCG and users on each judge, the columns
    suffixed ``_validation``, ``_pooled`` (where the run fitted the early fold) and ``_test``."""
    grid = weight_grid(cfg.score.weight_grid_step)
    mode = rank.ranking_mode(warehouse, cfg)
    judges = {VALIDATION: (VALIDATION,)}
    pooled = tuning.tuning_folds(warehouse, cfg)
    if len(pooled) > 1:
        judges[POOLED] = pooled
    judges[TEST] = (TEST,)
    merged = None
    for judge, folds in judges.items():
        frames = []
        with rank.validation_tuner(warehouse, cfg, mode, grid, folds) as tune:
            for sharpness in cfg.score.recent_sharpness_grid:
                frames.append(tune(float(sharpness)).assign(recent_sharpness=float(sharpness)))
        scored = pd.concat(frames, ignore_index=True)[
            ["recent_sharpness", "combo", cfg.score.tune_metric, "users"]
        ].rename(columns={cfg.score.tune_metric: f"{cfg.score.tune_metric}_{judge}"})
        scored = scored.rename(columns={"users": f"users_{judge}"})
        on = ["recent_sharpness", "combo"]
        merged = scored if merged is None else merged.merge(scored, on=on)
    return merged


def judges_of(scores: pd.DataFrame) -> list[str]:
    """The judges other than test that ``scores`` holds, in the order printed."""
    return [j for j in (VALIDATION, POOLED) if f"users_{j}" in scores]


def agreement(scores: pd.DataFrame, metric: str, judge: str = VALIDATION) -> dict[str, float]:
    """How ``judge``'s order of the grid agrees with test's, and where its first point lands."""
    judged, test = scores[f"{metric}_{judge}"], scores[f"{metric}_test"]
    # the judge's first point, ties to the earlier sharpness and point as the score job breaks them
    first = scores.sort_values(
        [f"{metric}_{judge}", "recent_sharpness", "combo"], ascending=[False, True, True]
    ).iloc[0]
    row = {
        "points": len(scores),
        "tuning users": int(scores[f"users_{judge}"].iloc[0]),
        "test users": int(scores["users_test"].iloc[0]),
        "spearman": spearman(judged, test),
    }
    for sharpness, group in scores.groupby("recent_sharpness"):
        row[f"spearman at {sharpness:g}"] = spearman(
            group[f"{metric}_{judge}"], group[f"{metric}_test"]
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
        for judge in judges_of(scores):
            row = agreement(scores, cfg.score.tune_metric, judge)
            rows.append({"data set": f"{folder.name} ({judge})", **row})
    table = pd.DataFrame(rows).set_index("data set").T
    print(f"\nthe weight grid on validation and test ({cfg.score.tune_metric}@{cfg.score.k})")
    print(table.to_string(float_format="%.4f"))


if __name__ == "__main__":
    main(sys.argv[1:])
