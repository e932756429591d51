"""Does validation order the weight grid as test does? Measured after a quality run.

    python benchmarks/quality.py FOLDER ... --work /tmp/hybridrec-quality
    python benchmarks/grid_agreement.py FOLDER ... --work /tmp/hybridrec-quality

For each data set folder (the arguments quality.py took; its newest run with fusion weights),
every point of the score job's weight grid (``score.weight_grid_step``) at each sharpness of
``score.recent_sharpness_grid`` is scored with the tuner the score job picks with, by each
judge: ``validation`` (the validation fold's models and targets alone), where the run fitted
the early fold ``early`` (its own) and ``pooled`` (both, as the score job picks), and ``test``
(the test fold's models and targets). Test is only read here, for this diagnostic; nothing is
picked on it. It prints per data set and judge: the users it scored, the Spearman rank
correlation of the points' NDCG by that judge and by test (per sharpness and over all points),
the test NDCG of the judge's first point against the test-best point and the grid's mean, and
that point's place on test.

More users judging should raise the correlation. A second table backtests the noise-aware
choice (``tuning.choose_near_prior``) at each ``--margins`` value: the point one judge picks,
scored by a later one; early's pick scored on validation judges the rule without test. The
``next`` share and re-rank after the grid are not re-made here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import measured_runs  # noqa: E402

from hybridrec.config.loader import Config  # noqa: E402
from hybridrec.constants import EARLY, TEST, VALIDATION  # noqa: E402
from hybridrec.ops.runner import setup_logging  # noqa: E402
from hybridrec.ranking import rank, tuning  # noqa: E402
from hybridrec.store.tables import Warehouse  # noqa: E402
from udfs.ranking_kernel import weight_grid  # noqa: E402

POOLED = "pooled"
PRIORS = ("centre", "configured")


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Pearson's correlation of the average ranks (ties share a rank)."""
    return float(a.rank().corr(b.rank()))


def grid_scores(warehouse: Warehouse, cfg: Config) -> pd.DataFrame:
    """One row per (sharpness, grid point): its NDCG and users on each judge, the columns
    suffixed ``_validation``, ``_early`` and ``_pooled`` (where the run fitted the early fold)
    and ``_test``. Each fold's grid is scored once; pooled is summed from its folds' scores as
    the score job's tuner sums them (``rank.pooled_summaries``)."""
    grid = weight_grid(cfg.score.weight_grid_step)
    mode = rank.ranking_mode(warehouse, cfg)
    sharpness_grid = [float(s) for s in cfg.score.recent_sharpness_grid]
    found = judges(warehouse, cfg)
    tuned = {}
    for judge, folds in found.items():
        if judge != POOLED:
            with rank.validation_tuner(warehouse, cfg, mode, grid, folds) as tune:
                tuned[judge] = {s: tune(s) for s in sharpness_grid}
    if POOLED in found:
        tuned[POOLED] = {
            s: rank.pooled_summaries([tuned[fold][s] for fold in found[POOLED]])
            for s in sharpness_grid
        }
    metric, merged = cfg.score.tune_metric, None
    for judge in found:
        scored = pd.concat(
            [frame.assign(recent_sharpness=s) for s, frame in tuned[judge].items()],
            ignore_index=True,
        )[["recent_sharpness", "combo", metric, "users"]].rename(
            columns={metric: f"{metric}_{judge}", "users": f"users_{judge}"}
        )
        on = ["recent_sharpness", "combo"]
        merged = scored if merged is None else merged.merge(scored, on=on)
    return merged


def judges(warehouse: Warehouse, cfg: Config) -> dict[str, tuple[str, ...]]:
    """Each judge's folds: validation alone, and where the run fitted the early fold, early
    alone and pooled with validation (as the score job picks); test last."""
    fitted = tuning.tuning_folds(warehouse, cfg)
    found = {VALIDATION: (VALIDATION,)}
    if EARLY in fitted:
        found |= {EARLY: (EARLY,), POOLED: fitted}
    return found | {TEST: (TEST,)}


def rule_backtest(
    warehouse: Warehouse, cfg: Config, scores: pd.DataFrame, margins: list[float]
) -> list[dict[str, float]]:
    """The pick of ``tuning.choose_near_prior`` at each margin (standard errors; 0 is the
    grid's best) and prior, made by one judge and scored by a later one: early picks and validation
    scores (the rule judged without reading test), validation or pooled picks and test scores
    (what the score job serves, test read for this diagnostic only)."""
    grid = weight_grid(cfg.score.weight_grid_step)
    mode = rank.ranking_mode(warehouse, cfg)
    metric = cfg.score.tune_metric
    found = judges(warehouse, cfg)
    rows = []
    for judge, target in ((EARLY, VALIDATION), (VALIDATION, TEST), (POOLED, TEST)):
        if judge not in found:
            continue
        results = tuning.ordered_grid(
            scores[["recent_sharpness", "combo", f"{metric}_{judge}"]].rename(
                columns={f"{metric}_{judge}": metric}
            ),
            grid,
            cfg,
        )
        row = {"picked by, scored on": f"{judge}, {target}"}
        rules = [(0.0, None)] + [(m, p) for p in PRIORS for m in margins if m > 0]
        with rank.validation_tuner(warehouse, cfg, mode, grid, found[judge]) as tune:
            for margin, prior in rules:
                picked, _ = tuning.choose_near_prior(
                    results, grid, tune, cfg, se=margin, prior=prior
                )
                point = picked[["recent_sharpness", "combo"]].merge(scores)
                name = "best" if margin == 0 else f"{prior} {margin:g}"
                row[name] = float(point[f"{metric}_{target}"].iloc[0])
        rows.append(row)
    return rows


def judges_of(scores: pd.DataFrame) -> list[str]:
    """The judges other than test that ``scores`` holds, in the order printed."""
    return [j for j in (VALIDATION, EARLY, POOLED) if f"users_{j}" in scores]


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
    parser.add_argument(
        "--reuse", action="store_true", help="read the grid's scores saved by an earlier run"
    )
    parser.add_argument(
        "--margins", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], metavar="SE"
    )
    args = parser.parse_args(argv)
    setup_logging()
    rows, picks = [], []
    for folder, cfg, _, warehouse in measured_runs(args.folders, args.work, args.set):
        saved = args.work / f"{folder.name}-grid.csv"
        if args.reuse and saved.exists():
            scores = pd.read_csv(saved)
        else:
            scores = grid_scores(warehouse, cfg)
            scores.to_csv(saved, index=False)
        for judge in judges_of(scores):
            row = agreement(scores, cfg.score.tune_metric, judge)
            rows.append({"data set": f"{folder.name} ({judge})", **row})
        for row in rule_backtest(warehouse, cfg, scores, args.margins):
            picks.append({"data set": folder.name, **row})
    table = pd.DataFrame(rows).set_index("data set").T
    print(f"\nthe weight grid on validation and test ({cfg.score.tune_metric}@{cfg.score.k})")
    print(table.to_string(float_format="%.4f"))
    print(
        f"\n{cfg.score.tune_metric}@{cfg.score.k} of the grid point picked nearest each prior "
        "within each margin (standard errors) of the best"
    )
    print(pd.DataFrame(picks).to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main(sys.argv[1:])
