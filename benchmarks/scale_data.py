"""Generated data for the scale benchmark: the sample's shape at any size, users block by block.

The built-in sample (``hybridrec.sources.sample``) builds a dense users x items affinity matrix
and draws each user's items in a Python loop, so it cannot make hundreds of thousands of users.
Here the same model (topic mixtures, popularity, ratings that follow affinity and quality, review
texts from the topic words) is drawn for a block of ``BLOCK_USERS`` users at a time: affinities for
the block only, and each user's items by the Gumbel top-k trick (the k largest of
``logits + Gumbel noise`` are a draw of k items without replacement, with probability proportional
to ``exp(logits)``), vectorised over the block.

Each block draws from its own random stream (seeded by the seed and the block's index), so the
data does not depend on how many blocks a written chunk holds. Rows are clean: no broken rows and
no orphan reviews, so every review belongs to a behaviour row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybridrec.sources.sample import (
    KINDS,
    START_TS,
    STYLES,
    TOPICS,
    _cumsum_by_group,
    events,
)

# Users per random stream. Fixed, not a parameter: changing it changes the data. At 10,000 items
# a block's logits and noise are 2 x 80 MB of float64.
BLOCK_USERS = 1000
ITEM_STREAM = -1  # the items' stream; user blocks use 0, 1, 2, ...


@dataclass(frozen=True)
class Spec:
    """What to generate: the sample's parameters (conf/base.yaml ``source.sample``)."""

    n_users: int
    n_items: int
    n_topics: int = 12
    events_per_user: float = 9.0
    review_fraction: float = 0.4
    seed: int = 42


@dataclass(frozen=True)
class Catalog:
    """Per-item draws every user block needs."""

    topic: np.ndarray  # items x topics mixture
    main: np.ndarray  # items' main topic
    quality: np.ndarray
    log_pop: np.ndarray
    words: list[list[str]]  # each topic's words
    frame: pd.DataFrame  # item_id, title, description


def _rng(spec: Spec, stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, stream + 1])  # SeedSequence wants non-negatives


def catalog(spec: Spec) -> Catalog:
    rng = _rng(spec, ITEM_STREAM)
    topics = list(TOPICS)[: min(spec.n_topics, len(TOPICS))]
    words = [TOPICS[t].split() for t in topics]
    topic = rng.dirichlet(np.full(len(topics), 0.15), size=spec.n_items)
    main = topic.argmax(axis=1)
    quality = rng.normal(0.0, 0.6, size=spec.n_items)
    pop = rng.zipf(1.6, size=spec.n_items).clip(max=200).astype(float)
    return Catalog(topic, main, quality, np.log(pop), words, _item_frame(rng, topics, words, main))


def _item_frame(
    rng: np.random.Generator, topics: list[str], words: list[list[str]], main: np.ndarray
) -> pd.DataFrame:
    """Titles and descriptions as the sample writes them (a loop over items, not users)."""
    return pd.DataFrame(
        {
            "item_id": np.char.add("i", np.arange(len(main)).astype(str)),
            "title": [
                f"{rng.choice(STYLES).title()} {topics[t]} {rng.choice(words[t])} "
                f"{rng.choice(KINDS)}"
                for t in main
            ],
            "description": [
                f"A {topics[t]} {rng.choice(KINDS)} with "
                f"{', '.join(rng.choice(words[t], 3, replace=False))}."
                for t in main
            ],
        }
    )


def gumbel_top_k(rng: np.random.Generator, logits: np.ndarray, counts: np.ndarray):
    """Row and column indices of ``counts[r]`` columns per row drawn without replacement with
    probability proportional to ``exp(logits[r])``, each row's columns best first."""
    keys = logits + rng.gumbel(size=logits.shape)
    k = int(counts.max())
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
    keep = np.arange(k)[None, :] < counts[:, None]
    return np.nonzero(keep)[0], top[keep]


def user_block(spec: Spec, cat: Catalog, block: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Behaviour and review rows of the users in ``block`` (``BLOCK_USERS`` of them, fewer in
    the last block)."""
    rng = _rng(spec, block)
    first = block * BLOCK_USERS
    n_users = min(BLOCK_USERS, spec.n_users - first)
    user_topic = rng.dirichlet(np.full(cat.topic.shape[1], 0.25), size=n_users)
    affinity = user_topic @ cat.topic.T  # this block's users x items only
    counts = np.minimum(np.maximum(rng.poisson(spec.events_per_user, n_users), 4), spec.n_items)
    local, item_idx = gumbel_top_k(rng, 10.0 * affinity + 0.5 * cat.log_pop, counts)
    n = len(local)

    # Rows come out grouped by user, so a running sum per user gives each user's timeline.
    start = START_TS + rng.integers(0, 400 * 86400, size=n_users)
    gaps = rng.exponential(5 * 86400, size=n).astype(np.int64) + 60
    ts = start[local] + _cumsum_by_group(gaps, local)
    latent = 2.5 * (affinity[local, item_idx] - 0.3) + cat.quality[item_idx]
    user_ids = np.char.add("u", (first + local).astype(str))
    return events(rng, user_ids, item_idx, latent, ts, spec.review_fraction, cat.words, cat.main)


def chunks(
    spec: Spec, chunk_users: int, cat: Catalog | None = None
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Behaviour and reviews of ``chunk_users`` users at a time (rounded up to whole blocks)."""
    cat = cat or catalog(spec)
    per_chunk = max(1, -(-chunk_users // BLOCK_USERS))
    n_blocks = -(-spec.n_users // BLOCK_USERS)
    for first in range(0, n_blocks, per_chunk):
        parts = [user_block(spec, cat, b) for b in range(first, min(first + per_chunk, n_blocks))]
        yield (
            pd.concat([p[0] for p in parts], ignore_index=True),
            pd.concat([p[1] for p in parts], ignore_index=True),
        )


def write_parquet(spec: Spec, folder: Path, chunk_users: int = 10_000) -> dict[str, int]:
    """Write ``behaviour/``, ``reviews/`` and ``items/`` Parquet folders (one file per chunk, so
    Spark reads them in parallel) and return their row counts."""
    counts = {"behaviour": 0, "reviews": 0}
    for name in ("behaviour", "reviews", "items"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    cat = catalog(spec)
    for i, (behaviour, reviews) in enumerate(chunks(spec, chunk_users, cat)):
        for name, frame in (("behaviour", behaviour), ("reviews", reviews)):
            frame.to_parquet(folder / name / f"part-{i:05d}.parquet", index=False)
            counts[name] += len(frame)
    items = cat.frame
    items.to_parquet(folder / "items" / "part-00000.parquet", index=False)
    counts["items"] = len(items)
    return counts
