"""What the re-rank and the hybrid could be instead, measured on validation after a quality run.

    python benchmarks/quality.py FOLDER ... --work /tmp/hybridrec-quality
    python benchmarks/validation_variants.py FOLDER ... --work /tmp/hybridrec-quality

For each data set folder (the arguments quality.py took), it reads that run's warehouse (the
newest run with fusion weights) and ranks the validation users with the picked weights, on the
validation fold's models, the way the score job's tuning does; then it prints, against the
served ranking without re-rank:

- **Re-rank variants**: the popularity de-biasing re-rank at each strength of
  ``score.debias_grid`` with 1, 3 (the default ``score.rerank_slots``) and 5 re-ranked places,
  and a calibrated variant that only penalises items more popular than the user's own history
  (``b * max(0, z(item) - mean z(history))``, z over log popularity): the NDCG change with its
  paired standard error, catalog coverage and tail-item HR (items among the
  ``evaluate.segment_fraction`` least popular).
- **EASE as an extra part**: the picked weights scaled by 1 - w plus w times EASE's normalised
  score (each λ of ``evaluate.ease.l2_grid``), where the catalog is at most
  ``evaluate.ease.max_items``.

The "what came next" part was measured here as a sixth part first; it is now the hybrid's own
``next`` part (table item_transitions), so the served ranking already has it at its pick.

Nothing here is picked on test. This is a diagnostic: it scores at most ``score.tune_max_users``
validation users (the tuning sample) in driver memory, one block of ``score.user_block_rows``
at a time. It needs full ranking (a catalog up to ``score.candidates.max_full_items``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import measured_runs  # noqa: E402

from hybridrec.config.loader import Config  # noqa: E402
from hybridrec.constants import (  # noqa: E402
    FUSION_WEIGHTS,
    INTERACTIONS,
    VALIDATION,
)
from hybridrec.evaluation import linear  # noqa: E402
from hybridrec.models.folds import history  # noqa: E402
from hybridrec.ops.runner import setup_logging  # noqa: E402
from hybridrec.ranking import catalogs, scoring  # noqa: E402
from hybridrec.store.tables import Warehouse  # noqa: E402
from udfs import ranking_kernel, rerank  # noqa: E402

SLOTS = (1, 3, 5)
EASE_SHARES = (0.1, 0.2, 0.3, 0.5)


@dataclass
class Block:
    """One block of validation users and what several variants derive from it, made once."""

    frame: pd.DataFrame
    catalog: ranking_kernel.ItemCatalog
    _made: dict = field(default_factory=dict)

    @cached_property
    def candidates(self) -> np.ndarray:
        return ~ranking_kernel.ragged_mask(self.frame["seen"], len(self.catalog))

    @cached_property
    def ties(self) -> np.ndarray:
        return rerank.tie_break(self.frame["user_id"].to_numpy(), self.catalog.ids)

    def once(self, key, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()`` the first time ``key`` is asked for in this block (a part's scores are
        shared by every weight it is mixed in at)."""
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]


# block, normalised parts, fused scores -> (scores, de-biased scores or None, re-ranked places)
Scorer = Callable[[Block, dict[str, np.ndarray], np.ndarray], tuple]


def ndcg_of(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def popularity_z(catalog: ranking_kernel.ItemCatalog) -> np.ndarray:
    pop = catalog.pop.astype(np.float64)
    return ((pop - pop.mean()) / (pop.std() or 1.0)).astype(np.float32)


def rerank_variants(cfg: Config, catalog: ranking_kernel.ItemCatalog) -> dict[str, Scorer]:
    z = popularity_z(catalog)
    variants: dict[str, Scorer] = {}
    for slots in SLOTS:
        for b in sorted(float(b) for b in cfg.score.debias_grid if b > 0):

            def plain(block, parts, fused, b=b, slots=slots):
                return fused, rerank.debiased_scores(fused, parts["pop"], b, block.ties), slots

            variants[f"global, {slots} slots, b={b:g}"] = plain
    for b in sorted(float(b) for b in cfg.score.debias_grid if b > 0):

        def calibrated(block, parts, fused, b=b):
            above = block.once("above own popularity", lambda: above_own_level(block, z))
            return fused, fused - np.float32(b) * above + block.ties, cfg.score.rerank_slots

        variants[f"calibrated, {cfg.score.rerank_slots} slots, b={b:g}"] = calibrated
    return variants


def above_own_level(block: Block, z: np.ndarray) -> np.ndarray:
    """(users, items): how far each item's popularity z lies above the mean z of the user's
    own history items (0 where it does not)."""
    seen = ranking_kernel.padded_history(block.frame["seen"], len(z))
    own = np.where(seen >= 0, z[np.maximum(seen, 0)], np.nan)
    level = np.nan_to_num(np.nanmean(own, axis=1), nan=0.0).astype(np.float32)
    return np.maximum(z[None, :] - level[:, None], 0)


def mixed_in(cfg: Config, block: Block, fused: np.ndarray, key, raw, share: float):
    """The fused scores scaled by 1 - share plus share times the extra part ``raw()``,
    normalised like every part (computed once per block and part)."""
    extra = block.once(
        key, lambda: ranking_kernel.normalise(raw(), block.candidates, cfg.score.normalisation)
    )
    return (1 - share) * fused + share * extra, None, 0


def ease_variants(cfg: Config, gram: np.ndarray | None) -> dict[str, Scorer]:
    """Holds one items x items float32 matrix per λ (576 MB each at 12,000 items)."""
    if gram is None:
        return {}
    variants: dict[str, Scorer] = {}
    for l2 in cfg.evaluate.ease.l2_grid:
        weights = linear.ease_weights(gram, float(l2))

        def ease_scores(block, weights=weights):
            return (
                ranking_kernel.ragged_mask(block.frame["seen"], len(weights)).astype(np.float32)
                @ weights
            )

        for share in EASE_SHARES:

            def with_ease(block, parts, fused, l2=l2, share=share, scores=ease_scores):
                return mixed_in(cfg, block, fused, ("ease", l2), lambda: scores(block), share)

            variants[f"ease part, λ={l2:g}, w={share:g}"] = with_ease
    return variants


def measure(cfg: Config, warehouse: Warehouse, spark) -> pd.DataFrame:
    picked = warehouse.read(FUSION_WEIGHTS).toPandas()
    hybrid = picked[picked["model"] == "hybrid"].iloc[0]
    weights = {part: float(hybrid[part]) for part in ranking_kernel.PARTS}
    catalog = catalogs.load_catalog(warehouse, cfg, VALIDATION)
    users = scoring.load_user_frame(spark, warehouse, catalog, VALIDATION, with_target=True)
    users = scoring.tuning_sample(users.where("target is not null"), cfg.score.tune_max_users)
    users = users.toPandas()  # the bounded tuning sample
    k, n_items = cfg.score.k, len(catalog)
    gram = None
    if n_items <= cfg.evaluate.ease.max_items:
        index = scoring.catalog_index(spark, catalog.ids)
        gram = linear.gram(history(warehouse.read(INTERACTIONS), VALIDATION), index, n_items)
    variants = {
        "served, no re-rank": lambda block, parts, fused: (fused, None, 0),
        **rerank_variants(cfg, catalog),
        **ease_variants(cfg, gram),
    }
    z = popularity_z(catalog)
    tail = z <= np.quantile(z, cfg.evaluate.segment_fraction)
    settings = scoring.kernel_settings(cfg, float(hybrid["recent_sharpness"]))
    gains = {name: [] for name in variants}
    shown = {name: np.zeros(n_items, bool) for name in variants}
    for start in range(0, len(users), cfg.score.user_block_rows):
        frame = users.iloc[start : start + cfg.score.user_block_rows].reset_index(drop=True)
        block = Block(frame, catalog)
        candidates = block.candidates
        parts, _ = ranking_kernel.normalised_parts(frame, catalog, candidates, **settings)
        fused = ranking_kernel.fuse(parts, weights)
        target = frame["target"].to_numpy().astype(np.int64)
        for name, variant in variants.items():
            scores, debiased, slots = variant(block, parts, fused)
            ranks = rerank.reranked_target_ranks(scores, debiased, candidates, target, k, slots)
            if debiased is None:
                items, _ = ranking_kernel.top_k(scores, candidates, k)
            else:
                items, _ = rerank.rerank_top_k(scores, debiased, candidates, k, slots)
            gains[name].append(pd.DataFrame({"ndcg": ndcg_of(ranks, k), "tail": tail[target]}))
            shown[name][items[items >= 0]] = True
    base = pd.concat(gains["served, no re-rank"], ignore_index=True)
    rows = []
    for name in variants:
        frame = pd.concat(gains[name], ignore_index=True)
        change = frame["ndcg"] - base["ndcg"]
        hits_tail = frame.loc[frame["tail"], "ndcg"] > 0
        rows.append(
            {
                "variant": name,
                "ndcg": frame["ndcg"].mean(),
                "change": change.mean() / base["ndcg"].mean(),
                "se": change.std(ddof=1) / np.sqrt(len(change)) / base["ndcg"].mean(),
                "coverage": shown[name].mean(),
                "tail hr": hits_tail.mean() if len(hits_tail) else float("nan"),
            }
        )
    return pd.DataFrame(rows).assign(users=len(base), items=n_items)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-quality"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    for folder, cfg, spark, warehouse in measured_runs(args.folders, args.work, args.set):
        table = measure(cfg, warehouse, spark)
        print(f"\n{folder.name}: validation, {table['users'][0]} users, {table['items'][0]} items")
        print(table.drop(columns=["users", "items"]).to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main(sys.argv[1:])
