"""The built-in sample: behaviour, order and text each carry a signal of their own, reproducibly.
Pure pandas: no Spark."""

from __future__ import annotations

import pandas as pd
import pytest

from hybridrec.config.loader import load_config
from hybridrec.sources import sample

SMALL = [
    "source.sample.n_users=400",
    "source.sample.n_items=120",
    "source.sample.bad_row_fraction=0",
]


def _frames(*settings: str) -> dict[str, pd.DataFrame]:
    return sample.generate(load_config(["conf/local.yaml"], [*SMALL, *settings]))


def _in_time_order(behaviour: pd.DataFrame) -> pd.DataFrame:
    events = behaviour.assign(ts=behaviour["event_ts"].astype("int64"))
    return events.sort_values(["user_id", "ts"], kind="stable")


def _follow_share(behaviour: pd.DataFrame) -> float:
    """Of all (item, next item) steps, the share going to each item's three most frequent
    successors: high when the order follows item-to-item links, low when it is random."""
    events = _in_time_order(behaviour)
    steps = pd.DataFrame(
        {"item": events["item_id"], "next": events.groupby("user_id")["item_id"].shift(-1)}
    ).dropna()
    counts = steps.value_counts().rename("n").reset_index()
    top = counts.sort_values("n", ascending=False).groupby("item").head(3)
    return top["n"].sum() / counts["n"].sum()


def _style_share(frames: dict[str, pd.DataFrame]) -> float:
    """The share of users' items in the style each user has most often (the first word of the
    item's title)."""
    style = frames["items"].set_index("item_id")["title"].str.split().str[0]
    had = frames["behaviour"].assign(style=lambda d: d["item_id"].map(style))
    per_user = had.groupby("user_id")["style"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    return float(per_user.mean())


def test_the_same_seed_gives_the_same_data():
    first, second = _frames(), _frames()
    for name in ("behaviour", "reviews", "items"):
        pd.testing.assert_frame_equal(first[name], second[name])


def test_the_order_of_a_users_items_follows_item_to_item_links():
    linked = _follow_share(_frames("source.sample.sequence_strength=0.6")["behaviour"])
    random = _follow_share(_frames("source.sample.sequence_strength=0.0")["behaviour"])
    assert linked > random + 0.2, (linked, random)


def test_a_users_style_draws_them_and_only_words_name_it():
    drawn = _style_share(_frames("source.sample.style_weight=3.0"))
    indifferent = _style_share(_frames("source.sample.style_weight=0.0"))
    assert drawn > indifferent + 0.1, (drawn, indifferent)
    frames = _frames()
    styles = {s.title() for s in sample.STYLES}
    assert set(frames["items"]["title"].str.split().str[0]) <= styles
    # Reviews name the style of the item they are about.
    reviews = frames["reviews"].merge(frames["items"], on="item_id")
    named = reviews.apply(
        lambda r: f"the {r['title'].split()[0].lower()} one" in r["review_text"], axis=1
    )
    assert named.mean() == pytest.approx(1.0)


def test_every_user_has_distinct_items_and_at_least_four():
    behaviour = _frames()["behaviour"]
    per_user = behaviour.groupby("user_id")["item_id"]
    assert (per_user.nunique() == per_user.size()).all()
    assert per_user.size().min() >= 4
