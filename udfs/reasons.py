"""Why each recommendation was made: the part that explains a pick (``part_contributions``,
``dominant_parts``), the reason texts (``REASONS``, ``NAMED_REASONS``, ``UNEXPLAINED``), and for
full ranking the history item a neighbour or text part names (``pick_reasons``). Imports only
``udfs.ranking_kernel``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from udfs.ranking_kernel import PARTS, ItemCatalog, padded_history

REASONS = {
    "cf": "liked by similar users",
    "cooc": "",  # filled with the history item it was most often had with
    "text": "",  # filled with the most similar history item
    "recent": "",
    "pop": "popular",
    "next": "",  # filled with the recent history item it most often came after
}
# How a neighbour part names the history item behind a recommendation, and what it says when
# no history item can be named.
NAMED_REASONS = {
    "cooc": ("often had with ", "often had with your items"),
    "text": ("similar to ", "matches your reviews"),
    "recent": ("similar to ", "matches your reviews"),
    "next": ("often had after ", "often had after your recent items"),
}
UNEXPLAINED = "ranked by the remaining signals"
TEXT_PARTS = ("text", "recent")


def text_explained(reasons: pd.Series) -> np.ndarray:
    """Whether each reason is one the text parts give (``similar to <item>`` or their fallback),
    the picks an interest can name (``hybridrec.views.TEXT_REASONS`` in SQL)."""
    prefixes = tuple({NAMED_REASONS[p][0] for p in TEXT_PARTS})
    fallbacks = {NAMED_REASONS[p][1] for p in TEXT_PARTS}
    text = reasons.fillna("").astype(str)
    return (text.str.startswith(prefixes) | text.isin(fallbacks)).to_numpy()


def part_contributions(
    parts: Mapping[str, np.ndarray],
    defined: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """(picks, parts): each part's weighted normalised score at the picked (row, col) entries;
    -inf where the part is unweighted or undefined there, since only a part that is weighted and
    defined for this (user, item) can explain it."""
    return np.stack(
        [
            np.where(
                defined[p][rows, cols] & (weights.get(p, 0.0) > 0),
                np.float32(weights.get(p, 0.0)) * parts[p][rows, cols],
                -np.inf,
            )
            for p in PARTS
        ],
        axis=1,
    )


def dominant_parts(contributions: np.ndarray, popular_share: float) -> np.ndarray:
    """Per pick, the index in PARTS of the part that explains it: the largest contribution,
    except that popularity is named only where it adds at least ``popular_share`` of the
    positive contributions. Below that a personal part added more in all (z-scores of several
    parts each a little above the mean), so the largest of those is named instead: "popular"
    says little to a user, and it should not stand for a pick the user's own history made."""
    dominant = contributions.argmax(axis=1)
    pop = PARTS.index("pop")
    positive = np.where(contributions > 0, contributions, 0.0).sum(axis=1)
    weak_pop = (dominant == pop) & (contributions[:, pop] < popular_share * positive)
    if weak_pop.any():
        personal = contributions[weak_pop].copy()
        personal[:, pop] = -np.inf
        dominant[weak_pop] = personal.argmax(axis=1)
    return dominant


def pick_reasons(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    rows: np.ndarray,
    items: np.ndarray,
    contributions: np.ndarray,
    history: int,
    next_items: int,
    popular_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A short why per recommendation: the part that explains it (``dominant_parts``), and for
    a text, co-occurrence or what-came-next part the user's closest recent history item, named
    in the text and returned as an id of its own (so an analyst joins it to a title without
    parsing the text)."""
    dominant = dominant_parts(contributions, popular_share)
    reasons = np.array([REASONS[p] for p in PARTS], dtype=object)[dominant]
    reasons[np.isneginf(contributions.max(axis=1))] = UNEXPLAINED
    reason_items = np.full(len(rows), None, dtype=object)
    history_idx = padded_history(block["seen"], history)[rows]  # (recommendations, width)
    known = np.maximum(history_idx, 0)
    is_text = np.isin(dominant, [PARTS.index("text"), PARTS.index("recent")])
    if is_text.any():
        sims = np.einsum("md,mwd->mw", catalog.text[items[is_text]], catalog.text[known[is_text]])
        has_text = (history_idx[is_text] >= 0) & catalog.has_text[known[is_text]]
        reasons[is_text], reason_items[is_text] = _name_closest(
            history_idx[is_text],
            np.where(has_text, sims, -np.inf),
            catalog,
            *NAMED_REASONS["text"],
        )
    listed_parts = (
        ("cooc", history_idx, catalog.neighbours, catalog.neighbour_sims),
        ("next", history_idx[:, :next_items], catalog.next_items, catalog.next_sims),
    )
    for part, voters, neighbours, neighbour_sims in listed_parts:
        chosen = dominant == PARTS.index(part)
        if not chosen.any():
            continue
        # How strongly each history item voted for the recommended one, from its list.
        voter = np.maximum(voters[chosen], 0)
        listed = neighbours[voter] == items[chosen][:, None, None]
        sims = np.where(listed, neighbour_sims[voter], -np.inf).max(axis=2, initial=-np.inf)
        reasons[chosen], reason_items[chosen] = _name_closest(
            voters[chosen],
            np.where(voters[chosen] >= 0, sims, -np.inf),
            catalog,
            *NAMED_REASONS[part],
        )
    return reasons, reason_items


def _name_closest(
    history_idx: np.ndarray, closeness: np.ndarray, catalog: ItemCatalog, prefix: str, fallback: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``prefix`` + the id of its history item with the highest closeness, and that
    id; ``fallback`` and None where no history item has any (-inf everywhere)."""
    closest = history_idx[np.arange(len(history_idx)), closeness.argmax(axis=1)]
    named = np.isfinite(closeness.max(axis=1))
    ids = catalog.ids[np.maximum(closest, 0)].astype(str)
    return (
        np.where(named, np.char.add(prefix, ids), fallback),
        np.where(named, ids.astype(object), None),
    )
