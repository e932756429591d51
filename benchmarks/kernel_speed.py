"""Scoring kernel speed: users per second of one block against catalogs of growing size.

    python benchmarks/kernel_speed.py [--items 10000 100000] [--block 256] [--repeats 3]

The kernel (``udfs.full_ranking``) is what every score and evaluate task runs on each block of
users, so its cost per user times the number of users, divided by the task slots, is the scoring
time.
Synthetic inputs of production shape: 384-d unit text vectors, rank-64 ALS factors, 100
co-occurrence and 100 text neighbours per item, 50 history items per user. Prints one row per
catalog size: seconds per block for the raw parts (split by part), for recommend (top-K of one
model) and for each weight-grid point of tuning past the first (the parts are scored once per
block), and users per second for each; then the same over per-user candidates chosen in the
block (``udfs.block_candidates``, the default candidate counts): what sets
``score.candidates.max_full_items``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from udfs import block_candidates, full_ranking, ranking_kernel

DIM, RANK, NEIGHBOURS, HISTORY, K = 384, 64, 100, 50, 10


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(rng: np.random.Generator, n_items: int, n_users: int):
    catalog = ranking_kernel.ItemCatalog(
        ids=np.array([f"i{i}" for i in range(n_items)]),
        cf=rng.standard_normal((n_items, RANK)).astype(np.float32),
        has_cf=np.ones(n_items, bool),
        text=unit_rows(rng, n_items, DIM),
        has_text=np.ones(n_items, bool),
        pop=np.log1p(rng.zipf(1.5, n_items).astype(np.float32)),
        neighbours=rng.integers(0, n_items, (n_items, NEIGHBOURS)),
        neighbour_sims=rng.random((n_items, NEIGHBOURS)).astype(np.float32),
        # Random, like the co-occurrence neighbours: the kernel's cost does not depend on which
        # items they are, and finding the true ones is the embed job's work, not the kernel's.
        text_neighbours=rng.integers(0, n_items, (n_items, NEIGHBOURS)),
        text_neighbour_sims=rng.random((n_items, NEIGHBOURS)).astype(np.float32),
        next_items=rng.integers(0, n_items, (n_items, NEIGHBOURS)),
        next_sims=rng.random((n_items, NEIGHBOURS)).astype(np.float32),
    )
    block = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "factors": list(rng.standard_normal((n_users, RANK)).astype(np.float32)),
            "embedding": list(unit_rows(rng, n_users, DIM)),
            "seen": [rng.choice(n_items, HISTORY, replace=False) for _ in range(n_users)],
            "target": rng.integers(0, n_items, n_users),
        }
    )
    return catalog, block


def seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def time_steps(
    block: pd.DataFrame, catalog: ranking_kernel.ItemCatalog, repeats: int
) -> dict[str, float]:
    """Seconds of each kernel step on one block (best of ``repeats``)."""
    weights = {"cf": 0.2, "cooc": 0.2, "text": 0.1, "recent": 0.4, "pop": 0.1}
    settings = {"method": "zscore", "recent_sharpness": 40.0}
    history = ranking_kernel.padded_history(block["seen"], HISTORY)
    timings = {
        "cooc part": seconds(
            lambda: ranking_kernel.history_votes(
                history, catalog.neighbours, catalog.neighbour_sims, 3.0
            ),
            repeats,
        ),
        "recent part (sharpness 40)": seconds(
            lambda: ranking_kernel.recent_similarity(history, catalog, 1.0, 40.0), repeats
        ),
        "all raw parts": seconds(
            lambda: ranking_kernel.raw_parts(block, catalog, recent_sharpness=40.0), repeats
        ),
        "recommend (1 model)": seconds(
            lambda: full_ranking.recommend_block(
                block, catalog, {"hybrid": weights}, k=K, **settings
            ),
            repeats,
        ),
    }
    one, eleven = (
        seconds(
            lambda n=n: full_ranking.tune_block(block, catalog, [weights] * n, **settings), repeats
        )
        for n in (1, 11)
    )
    timings["tune, each grid point past the first"] = (eleven - one) / 10
    # The same work over per-user candidates chosen in the block (score.candidates.mode:
    # candidates with the catalog in memory), at the default candidate counts.
    counts = block_candidates.CandidateCounts(als=200, cooc=100, text=100, next=100, popular=20)
    vote_settings = {
        "history_cap": HISTORY,
        "recent_sharpness": 40.0,
        "recent_half_life": 1.0,
        "cooc_half_life": 3.0,
        "next_items": 3,
        "next_half_life": 1.0,
    }
    timings["candidates: recommend (1 model)"] = seconds(
        lambda: block_candidates.recommend_block(
            block, catalog, {"hybrid": weights}, counts, k=K, method="zscore", **vote_settings
        ),
        repeats,
    )
    one, eleven = (
        seconds(
            lambda n=n: block_candidates.tune_block(
                block,
                catalog,
                [weights] * n,
                counts,
                method="zscore",
                miss_rank=-1,
                **vote_settings,
            ),
            repeats,
        )
        for n in (1, 11)
    )
    timings["candidates: tune, first grid point"] = one
    timings["candidates: tune, each grid point past the first"] = (eleven - one) / 10
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for n_items in args.items:
        catalog, block = synthetic(rng, n_items, args.block)
        timings = time_steps(block, catalog, args.repeats)
        for step, took in timings.items():
            rows.append(
                {
                    "items": n_items,
                    "step": step,
                    "seconds / block": took,
                    "users / s": args.block / took,
                }
            )
    table = pd.DataFrame(rows)
    print(f"\nblock of {args.block} users, {HISTORY} history items each, best of {args.repeats}\n")
    print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
