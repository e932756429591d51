"""The built-in sample data set, where behaviour, sequence and text each carry part of the signal.

Users prefer one or two topics and one style; items belong mostly to one topic and have one
style. Which items a user touches follows popularity times topic affinity (what co-occurrence and
ALS learn), plus a pull towards the user's style, which only the words of titles and reviews
name (what the text vectors see); and in what order: with ``sequence_strength`` the next item is
one of the previous item's few follow-ups (an accessory, a refill: what the recent and next parts
follow). Review text is built from the topic's words and the item's style, with a sentiment that
follows the rating. A small share of rows is broken on purpose so that the rejects path runs on
every sample run.

Generation is seeded numpy on the driver: the sample's size is set by config, not by the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hybridrec.config.loader import Config

TOPICS = {
    "hiking": "trail tent backpack summit boots compass campfire mountain ridge canteen",
    "coffee": "espresso roast grinder beans crema latte barista brew mug aroma",
    "baking": "flour oven sourdough dough whisk pastry yeast cake icing loaf",
    "gaming": "console controller multiplayer quest level boss graphics joystick arcade headset",
    "gardening": "soil seeds compost tomatoes pruning shears greenhouse watering hose bulbs",
    "fitness": "dumbbells treadmill protein workout yoga mat kettlebell cardio stretching gym",
    "photography": "lens camera tripod aperture shutter portrait zoom flash sensor lighting",
    "music": "guitar strings amplifier chords piano melody drum vinyl speaker tuner",
    "skincare": "moisturizer serum sunscreen cleanser lotion hydrating acne fragrance cream toner",
    "reading": "novel chapters author paperback mystery plot characters library fiction poems",
    "pets": "dog leash kibble cat litter treats collar puppy aquarium grooming",
    "cycling": "bike helmet pedals saddle gears tyres chain commute derailleur cyclist",
    "travel": "suitcase passport luggage airport hotel map backpacking adapter itinerary beach",
    "cooking": "skillet knife spices recipe saucepan grill marinade wok cutting board",
}
POSITIVE = [
    "love this",
    "excellent quality",
    "works great",
    "highly recommend",
    "really happy with",
]
NEUTRAL = ["it is okay", "does the job", "average overall", "fine for the price", "nothing special"]
NEGATIVE = ["very disappointed", "broke quickly", "poor quality", "would not buy again", "waste"]
KINDS = ["kit", "set", "guide", "pack", "essentials", "starter", "pro edition", "bundle"]
STYLES = ["classic", "deluxe", "compact", "everyday", "premium", "travel", "eco", "ultra"]
# What each style looks like in words: item descriptions and reviews use them, so that a text
# vector carries the style, not only its one name.
STYLE_WORDS = {
    "classic": "timeless vintage traditional wooden heritage",
    "deluxe": "luxurious velvet gold leather elegant",
    "compact": "small foldable pocket lightweight slim",
    "everyday": "simple practical durable basic reliable",
    "premium": "professional precision engineered titanium flagship",
    "travel": "portable packable carry-on rugged adventure",
    "eco": "recycled bamboo organic sustainable biodegradable",
    "ultra": "powerful turbo extreme high-performance maximum",
}
EVENT_TYPES = ["rating", "purchase", "click"]
EVENT_TYPE_P = [0.5, 0.25, 0.25]
START_TS = 1_500_000_000  # 2017-07-14, so every timestamp is a plausible epoch second


def generate(cfg: Config) -> dict[str, pd.DataFrame]:
    """Return raw ``behaviour``, ``reviews`` and ``items`` frames in the sources' raw schema."""
    p = cfg.source.sample
    rng = np.random.default_rng(p.seed)
    topics = list(TOPICS)[: p.n_topics] if p.n_topics <= len(TOPICS) else list(TOPICS)
    n_topics = len(topics)
    words = [TOPICS[t].split() for t in topics]

    item_topic = rng.dirichlet(np.full(n_topics, 0.15), size=p.n_items)
    item_main = item_topic.argmax(axis=1)
    item_quality = rng.normal(0.0, 0.6, size=p.n_items)
    item_pop = rng.zipf(1.6, size=p.n_items).clip(max=200).astype(float)
    item_style = rng.integers(0, len(STYLES), size=p.n_items)
    user_topic = rng.dirichlet(np.full(n_topics, 0.25), size=p.n_users)
    user_style = rng.integers(0, len(STYLES), size=p.n_users)

    affinity = user_topic @ item_topic.T  # users x items, in [0, 1]
    same_style = user_style[:, None] == item_style[None, :]
    logits = 10.0 * affinity + p.style_weight * same_style + 0.5 * np.log(item_pop)
    follow_ups = _follow_ups(rng, item_main, item_pop)
    n_events = np.minimum(np.maximum(rng.poisson(p.events_per_user, size=p.n_users), 4), p.n_items)
    users, items = [], []
    for u in range(p.n_users):  # a generator loop over sample users, not over table rows
        chosen = _sequence(rng, logits[u], follow_ups, n_events[u], p.sequence_strength)
        users.append(np.full(len(chosen), u))
        items.append(chosen)
    user_idx = np.concatenate(users)
    item_idx = np.concatenate(items)
    n = len(user_idx)

    start = START_TS + rng.integers(0, 400 * 86400, size=p.n_users)
    gaps = rng.exponential(5 * 86400, size=n).astype(np.int64) + 60
    order = np.lexsort((np.arange(n), user_idx))
    ts = np.empty(n, dtype=np.int64)
    ts[order] = start[user_idx[order]] + _cumsum_by_group(gaps[order], user_idx[order])

    latent = 2.5 * (affinity[user_idx, item_idx] - 0.3) + item_quality[item_idx]
    behaviour, reviews = events(
        rng,
        np.char.add("u", user_idx.astype(str)),
        item_idx,
        latent,
        ts,
        p.review_fraction,
        words,
        item_main,
        item_style,
    )
    reviews = pd.concat(
        [reviews, _orphan_reviews(rng, p, words, item_main, item_style, reviews)],
        ignore_index=True,
    )

    items_df = pd.DataFrame(
        {
            "item_id": np.char.add("i", np.arange(p.n_items).astype(str)),
            "title": [
                f"{STYLES[st].title()} {topics[t]} {rng.choice(words[t])} {rng.choice(KINDS)}"
                for t, st in zip(item_main, item_style, strict=True)
            ],
            "description": [
                f"A {STYLES[st]} {topics[t]} {rng.choice(KINDS)} with "
                f"{', '.join(rng.choice(words[t], 3, replace=False))}: "
                f"{' and '.join(rng.choice(STYLE_WORDS[STYLES[st]].split(), 2, replace=False))}."
                for t, st in zip(item_main, item_style, strict=True)
            ],
        }
    )
    behaviour = _break_some_rows(rng, behaviour, p.bad_row_fraction)
    return {"behaviour": behaviour, "reviews": reviews, "items": items_df}


def events(
    rng: np.random.Generator,
    user_ids: np.ndarray,
    item_idx: np.ndarray,
    latent: np.ndarray,
    ts: np.ndarray,
    review_fraction: float,
    words: list[list[str]],
    item_main: np.ndarray,
    item_style: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw behaviour rows (a 1-5 rating from ``latent`` plus noise, kept on rating events) and
    the reviews of a ``review_fraction`` of them: text from the item's main topic's ``words``
    (and its style, where items have one) with a sentiment that follows the rating, written
    within a day of the event."""
    n = len(user_ids)
    rating = np.clip(np.rint(3.0 + 1.6 * latent + rng.normal(0, 0.6, n)), 1, 5)
    event_type = rng.choice(EVENT_TYPES, size=n, p=EVENT_TYPE_P)
    item_ids = np.char.add("i", item_idx.astype(str))
    behaviour = pd.DataFrame(
        {
            "user_id": user_ids,
            "item_id": item_ids,
            "rating": np.where(event_type == "rating", rating, np.nan),
            "event_type": event_type,
            "event_ts": ts.astype(str),
        }
    )
    reviewed = rng.random(n) < review_fraction
    stars = rating[reviewed]
    reviews = pd.DataFrame(
        {
            "user_id": user_ids[reviewed],
            "item_id": item_ids[reviewed],
            "rating": stars,
            "summary": _phrases(rng, stars),
            "review_text": _review_texts(
                rng,
                words,
                item_main[item_idx[reviewed]],
                stars,
                None if item_style is None else item_style[item_idx[reviewed]],
            ),
            "event_ts": (ts[reviewed] + rng.integers(600, 86400, size=len(stars))).astype(str),
        }
    )
    return behaviour, reviews


def _cumsum_by_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Running sum of ``values`` restarting at each new group (rows sorted by group)."""
    total = np.cumsum(values)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    offsets = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, len(values)]))
    return total - offsets


def _phrases(rng: np.random.Generator, ratings: np.ndarray) -> list[str]:
    pools = {1.0: NEGATIVE, 2.0: NEGATIVE, 3.0: NEUTRAL, 4.0: POSITIVE, 5.0: POSITIVE}
    return [str(rng.choice(pools[r])).capitalize() for r in ratings]


def _review_texts(
    rng: np.random.Generator,
    words: list[list[str]],
    topic: np.ndarray,
    ratings: np.ndarray,
    style: np.ndarray | None = None,
) -> list[str]:
    texts = []
    styles = [None] * len(topic) if style is None else style
    for t, r, st in zip(topic, ratings, styles, strict=True):
        picked = rng.choice(words[t], size=3, replace=False)
        mood = _phrases(rng, np.array([r]))[0].lower()
        verdict = "great" if r >= 4 else "meh" if r == 3 else "bad"
        what = "it" if st is None else f"the {STYLES[st]} one"
        looks = "" if st is None else f", {rng.choice(STYLE_WORDS[STYLES[st]].split())} as I like"
        texts.append(
            f"Bought {what} for my {picked[0]} and {picked[1]}; {mood}. "
            f"The {picked[2]} part is {verdict}{looks}."
        )
    return texts


def _follow_ups(
    rng: np.random.Generator, item_main: np.ndarray, item_pop: np.ndarray, n: int = 3
) -> np.ndarray:
    """Per item, ``n`` items often had next: two of its own topic and one of any (an accessory,
    a refill, the next volume), the more popular the likelier."""
    weight = np.sqrt(item_pop)
    out = np.empty((len(item_main), n), dtype=np.int64)
    items = np.arange(len(item_main))
    for i, topic in enumerate(item_main):  # per catalog item, as the loop over users
        not_i = items != i
        own = np.flatnonzero((item_main == topic) & not_i)
        own = own if len(own) >= n - 1 else np.flatnonzero(not_i)
        picked = rng.choice(own, size=n - 1, replace=False, p=weight[own] / weight[own].sum())
        others = np.flatnonzero(not_i & ~np.isin(items, picked))
        out[i, : n - 1] = picked
        out[i, n - 1] = rng.choice(others, p=weight[others] / weight[others].sum())
    return out


def _sequence(
    rng: np.random.Generator,
    logits: np.ndarray,
    follow_ups: np.ndarray,
    n: int,
    strength: float,
) -> np.ndarray:
    """One user's ``n`` distinct items in time order: each a follow-up of the previous one with
    chance ``strength`` (while one is left), else drawn by ``logits`` among the rest."""
    prob = np.exp(logits - logits.max())
    taken = np.zeros(len(logits), dtype=bool)
    chosen = []
    for _ in range(n):
        options = follow_ups[chosen[-1]][~taken[follow_ups[chosen[-1]]]] if chosen else []
        if len(options) and rng.random() < strength:
            item = int(rng.choice(options))
        else:
            left = np.where(taken, 0.0, prob)
            item = int(rng.choice(len(logits), p=left / left.sum()))
        taken[item] = True
        chosen.append(item)
    return np.array(chosen, dtype=np.int64)


def _orphan_reviews(rng, p, words, item_main, item_style, reviews: pd.DataFrame) -> pd.DataFrame:
    """Reviews whose (user, item) has no behaviour row: they become interactions of their own."""
    n = int(len(reviews) * p.orphan_review_fraction)
    users = rng.integers(0, p.n_users, size=n)
    items = rng.integers(0, p.n_items, size=n)
    ratings = rng.integers(1, 6, size=n).astype(float)
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "rating": ratings,
            "summary": _phrases(rng, ratings),
            "review_text": _review_texts(rng, words, item_main[items], ratings, item_style[items]),
            "event_ts": (START_TS + rng.integers(0, 400 * 86400, size=n)).astype(str),
        }
    )


def _break_some_rows(rng: np.random.Generator, df: pd.DataFrame, fraction: float) -> pd.DataFrame:
    n_bad = int(len(df) * fraction)
    if n_bad == 0:
        return df
    broken = df.sample(n=n_bad, random_state=int(rng.integers(1 << 31))).copy()
    kind = np.arange(n_bad) % 4
    broken.loc[kind == 0, "user_id"] = None
    broken.loc[kind == 1, "rating"] = 9.0
    broken.loc[kind == 1, "event_type"] = "rating"
    broken.loc[kind == 2, "event_ts"] = "not-a-date"
    duplicates = df.sample(n=int(n_bad / 4) + 1, random_state=int(rng.integers(1 << 31)))
    return pd.concat([df, broken[kind != 3], duplicates], ignore_index=True)
