"""Every model's list metrics for a block of whole users, in numpy: the evaluate stage's kernel.

A block holds, for each of its users, every model's top-k rows (model, user_id, rank, item_id)
and the user's held-out truth rows tagged by segment (model null, segment set). From them it
adds, per (model, segment), the sums the means and the paired comparisons need: for each ranking
metric the sum and sum of squares over the segment's users, and the sum and sum of squares of
the reference model's value minus this model's, user by user. A user with truth but no row of a
model scores zero for it, as in ``hybridrec.evaluation.metrics.per_user_metrics``, whose
definitions these are (NDCG, HR, precision, recall, MAP at k, MAP over min(k, relevant)). Per
model it also adds the list diversity (one minus the mean pairwise dot product of a list's item
vectors, for lists with two or more), the novelty (-log2 of the item's smoothed share of
history users, per row) and the items recommended at all (coverage).

Sums, not per-user rows, leave the workers: the driver reads a few hundred numbers per task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RANKING_METRICS = ("ndcg", "hr", "precision", "recall", "map")
# Per (model, segment) and ranking metric: the sums a mean and a paired comparison need.
SUMS = ("sum", "sumsq", "diff_sum", "diff_sumsq")
USER, ITEM, MODEL, RANK, SEGMENT = "user_id", "item_id", "model", "rank", "segment"


@dataclass
class ListContext:
    """What every task holds: the evaluated models and segments (fixed axes), the reference,
    k, and per catalog item its vector and novelty."""

    models: list[str]
    segments: list[str]
    reference: str
    k: int
    items: pd.Index  # item ids, row-aligned with vectors and information
    vectors: np.ndarray  # (n, dim) float32, zeros where has_vector is False
    has_vector: np.ndarray  # (n,) bool
    information: np.ndarray  # (n,) -log2 of the smoothed share of history users
    unknown_information: float  # the same for an item no history user had


@dataclass
class ListSums:
    """Running sums over blocks; ``rows`` hands them over as one small frame."""

    context: ListContext
    ranking: np.ndarray = field(init=False)  # (metric, sum kind, model, segment)
    segment_users: np.ndarray = field(init=False)  # (segment,)
    diversity: np.ndarray = field(init=False)  # (model, 2): sum of list diversity, lists
    novelty: np.ndarray = field(init=False)  # (model, 2): sum of information, rows
    covered: np.ndarray = field(init=False)  # (model, n) bool
    covered_elsewhere: list[set] = field(init=False)  # items outside the context's index

    def __post_init__(self) -> None:
        m, s = len(self.context.models), len(self.context.segments)
        self.ranking = np.zeros((len(RANKING_METRICS), len(SUMS), m, s))
        self.segment_users = np.zeros(s)
        self.diversity = np.zeros((m, 2))
        self.novelty = np.zeros((m, 2))
        self.covered = np.zeros((m, len(self.context.items)), dtype=bool)
        self.covered_elsewhere = [set() for _ in range(m)]

    def add(self, block: pd.DataFrame) -> None:
        truth = block[block[MODEL].isna()]
        lists = block[block[MODEL].notna() & (block[RANK] <= self.context.k)]
        users = pd.Index(pd.unique(block[USER]))
        model = self.context.models
        known = pd.Index(model).get_indexer(lists[MODEL])
        if (known < 0).any():
            raise ValueError(f"rows of a model not evaluated: {set(lists[MODEL][known < 0])}")
        lists = lists.assign(_m=known, _u=users.get_indexer(lists[USER]))
        self._add_ranking(lists, truth, users)
        self._add_lists(lists, len(users))

    def _add_ranking(self, lists: pd.DataFrame, truth: pd.DataFrame, users: pd.Index) -> None:
        ctx, k = self.context, self.context.k
        truth = truth[[SEGMENT, USER, ITEM]].drop_duplicates()
        seg = pd.Index(ctx.segments).get_indexer(truth[SEGMENT])
        if (seg < 0).any():
            raise ValueError(f"truth rows of an unknown segment: {set(truth[SEGMENT][seg < 0])}")
        # one target per (segment, user with truth in it)
        target_key = seg * len(users) + users.get_indexer(truth[USER])
        target, target_keys = pd.factorize(target_key)
        n_targets = len(target_keys)
        if not n_targets:
            return
        target_segment = np.asarray(target_keys) // len(users)
        relevant = np.bincount(target, minlength=n_targets)
        cutoff = np.minimum(k, relevant)
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])[cutoff]

        hits = lists[[USER, ITEM, "_m", RANK]].merge(
            pd.DataFrame(
                {USER: truth[USER].to_numpy(), ITEM: truth[ITEM].to_numpy(), "_t": target}
            ),
            on=[USER, ITEM],
        )
        hits = hits.sort_values(["_m", "_t", RANK], kind="stable")
        position = hits.groupby(["_m", "_t"], sort=False).cumcount().to_numpy() + 1
        rank = hits[RANK].to_numpy(dtype=np.float64)
        cell = hits["_m"].to_numpy() * n_targets + hits["_t"].to_numpy()
        shape = (len(ctx.models), n_targets)
        size = shape[0] * shape[1]
        dcg = np.bincount(cell, 1.0 / np.log2(rank + 1), size).reshape(shape)
        n_hits = np.bincount(cell, minlength=size).reshape(shape).astype(np.float64)
        ap_sum = np.bincount(cell, position / rank, size).reshape(shape)
        values = {
            "ndcg": dcg / ideal,
            "hr": (n_hits > 0).astype(np.float64),
            "precision": n_hits / k,
            "recall": n_hits / relevant,
            "map": ap_sum / cutoff,
        }
        in_segment = np.zeros((n_targets, len(ctx.segments)))
        in_segment[np.arange(n_targets), target_segment] = 1.0
        self.segment_users += in_segment.sum(axis=0)
        reference = ctx.models.index(ctx.reference) if ctx.reference in ctx.models else None
        for j, name in enumerate(RANKING_METRICS):
            value = values[name]
            diff = value[reference] - value if reference is not None else np.zeros_like(value)
            for s, term in enumerate((value, value**2, diff, diff**2)):
                self.ranking[j, s] += term @ in_segment

    def _add_lists(self, lists: pd.DataFrame, n_users: int) -> None:
        ctx = self.context
        m = lists["_m"].to_numpy()
        item = ctx.items.get_indexer(lists[ITEM])
        found = item >= 0
        self.covered[m[found], item[found]] = True
        for model, name in zip(m[~found], lists[ITEM].to_numpy()[~found], strict=True):
            self.covered_elsewhere[model].add(name)  # an item outside the catalog: rare
        information = np.where(found, ctx.information[np.maximum(item, 0)], ctx.unknown_information)
        self.novelty[:, 0] += np.bincount(m, information, len(ctx.models))
        self.novelty[:, 1] += np.bincount(m, minlength=len(ctx.models))

        with_vector = found & ctx.has_vector[np.maximum(item, 0)]
        group = m[with_vector] * n_users + lists["_u"].to_numpy()[with_vector]
        if not len(group):
            return
        order = np.argsort(group, kind="stable")
        group, vectors = group[order], ctx.vectors[item[with_vector][order]].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        sums = np.add.reduceat(vectors, starts, axis=0)
        squares = np.add.reduceat(np.square(vectors).sum(axis=1), starts)
        counts = np.diff(np.r_[starts, len(group)])
        pairs = counts * (counts - 1) / 2
        keep = pairs > 0
        dots = (np.square(sums).sum(axis=1) - squares) / 2
        list_model = group[starts][keep] // n_users
        n_models = len(ctx.models)
        self.diversity[:, 0] += np.bincount(list_model, 1.0 - dots[keep] / pairs[keep], n_models)
        self.diversity[:, 1] += np.bincount(list_model, minlength=n_models)

    def rows(self) -> pd.DataFrame:
        """One row per figure: (kind, model, segment, metric, value), and per model the covered
        items as packed bits (kind ``covered``) and the names of any outside the index."""
        ctx, out = self.context, []
        for j, name in enumerate(RANKING_METRICS):
            for s_kind, sums in zip(SUMS, self.ranking[j], strict=True):
                for mi, model in enumerate(ctx.models):
                    for si, segment in enumerate(ctx.segments):
                        out.append((s_kind, model, segment, name, float(sums[mi, si]), None))
        for si, segment in enumerate(ctx.segments):
            out.append(("users", None, segment, None, float(self.segment_users[si]), None))
        for mi, model in enumerate(ctx.models):
            out += [
                ("diversity_sum", model, None, None, float(self.diversity[mi, 0]), None),
                ("diversity_lists", model, None, None, float(self.diversity[mi, 1]), None),
                ("novelty_sum", model, None, None, float(self.novelty[mi, 0]), None),
                ("novelty_rows", model, None, None, float(self.novelty[mi, 1]), None),
                ("covered", model, None, None, 0.0, np.packbits(self.covered[mi]).tobytes()),
            ]
            out += [
                ("covered_elsewhere", model, None, str(item), 0.0, None)
                for item in sorted(self.covered_elsewhere[mi])
            ]
        return pd.DataFrame(out, columns=["kind", MODEL, SEGMENT, "metric", "value", "bits"])


def whole_users(batches: Iterator[pd.DataFrame], block_rows: int) -> Iterator[pd.DataFrame]:
    """Blocks of about ``block_rows`` rows from batches sorted by user, each holding every row of
    its users: once ``block_rows`` have arrived, all but the last user's rows go, as the last
    user's may go on in the next batch."""
    pending, pending_rows = [], 0
    for batch in batches:
        if batch.empty:
            continue
        pending.append(batch)
        pending_rows += len(batch)
        if pending_rows < block_rows:
            continue
        frame = pd.concat(pending, ignore_index=True)
        last = frame[USER].to_numpy() == frame[USER].iloc[-1]
        pending, pending_rows = [frame[last]], int(last.sum())
        if not last.all():
            yield frame[~last]
    if pending_rows:
        yield pd.concat(pending, ignore_index=True)
