"""Property: whatever bytes come in, ingest does not crash, accounts for every row, keeps each valid
row's values as they came (but for the documented normalisations) and rejects each bad row with
its reason.

Hypothesis draws each example's make-up (the mix of cases, the id whitespace mode, the review texts
and a seed); the rows are then expanded from it, at least 2,000 per example (a behaviour CSV and a
reviews CSV, written as bytes), and go through the ingest job (``jobs.ingest.run``).
"""

from __future__ import annotations

import csv
import io
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.store.tables import Warehouse
from jobs import ingest as ingest_job

BEHAVIOUR_ROWS = 1_200
REVIEW_ROWS = 900  # 2,100 rows per example, 10,500 in all
MIN_TS = datetime(1990, 1, 1, tzinfo=timezone.utc)
NOW = datetime.now(timezone.utc).replace(microsecond=0)
EVENT_TYPES = "['rating', 'review', 'click', 'purchase']"

# Cases and the reason each is rejected with (None: valid). Behaviour and reviews share the
# id, time, field-count and duplicate cases.
SHARED = {
    "valid": None,
    "valid_min_ts": None,
    "valid_latest_ts": None,
    "bad_utf8_user": "invalid encoding",
    "bad_utf8_item": "invalid encoding",
    "literal_fffd_user": "invalid encoding",
    "ws_user": "user_id has surrounding whitespace",
    "ws_item": "item_id has surrounding whitespace",
    "control_user": "user_id has control characters",
    "missing_user": "missing user_id",
    "year_3000": "event_ts after ",
    "year_3000_seconds": "event_ts after ",
    "two_days_ahead": "event_ts after ",
    "year_minus_1000": "event_ts before 1990-01-01T00:00:00Z",
    "epoch_0": "event_ts before 1990-01-01T00:00:00Z",
    "second_before_min": "event_ts before 1990-01-01T00:00:00Z",
    "not_a_time": "invalid event_ts",
    "extra_field": "wrong number of fields",
    "missing_field": "wrong number of fields",
    "rating_out_of_range": "rating outside [1.0, 5.0]",
    "rating_not_a_number": "rating is not a number",
    "duplicate": "duplicate row",
}
BEHAVIOUR_CASES = {
    **SHARED,
    "rating_missing": "rating event without rating",
    "unknown_event": f"event_type not in {EVENT_TYPES}",
}
REVIEW_CASES = {**SHARED, "bad_utf8_text": "invalid encoding", "attached": None}
TEXT_CHARS = list("abcXYZ019 ,;\"'\n\r—é😀") + ["\r\n"]
CONTROL = ["\x01", "\x1b", "\x7f"]
WHITESPACE = [" {}", "{} ", "\t{}", "{}\u00a0", " {} ", "\u3000{}"]


@dataclass
class Row:
    """One input record: its fields as bytes, and what ingest should make of it."""

    tag: str
    fields: list[bytes]
    reason: str | None = None  # expected reject reason (a prefix for "event_ts after ")
    key: tuple[str, str] | None = None  # (user, item) in interactions when valid
    values: dict = field(default_factory=dict)  # expected interaction values when valid


@dataclass
class Spec:
    seed: int
    id_whitespace: str
    behaviour_weights: dict[str, int]
    review_weights: dict[str, int]
    texts: list[str]


def _weights(cases: dict[str, str | None]) -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({case: st.integers(0, 5) for case in cases})


specs = st.builds(
    Spec,
    seed=st.integers(0, 2**32 - 1),
    id_whitespace=st.sampled_from(["reject", "trim"]),
    behaviour_weights=_weights(BEHAVIOUR_CASES),
    review_weights=_weights(REVIEW_CASES),
    texts=st.lists(
        st.lists(st.sampled_from(TEXT_CHARS), max_size=30).map("".join), min_size=1, max_size=20
    ),
)


def _field(value: bytes, rng: random.Random) -> bytes:
    """RFC 4180: quoted when it must be (and now and then when it need not)."""
    if any(c in value for c in (b",", b'"', b"\n", b"\r")) or (value and rng.random() < 0.2):
        return b'"' + value.replace(b'"', b'""') + b'"'
    return value


def _ts(rng: random.Random) -> tuple[str, int]:
    """A valid event time in one of the accepted forms, and its epoch seconds."""
    seconds = rng.randint(int(MIN_TS.timestamp()), int(NOW.timestamp()))
    form = rng.randrange(4)
    if form == 0:
        return str(seconds), seconds
    if form == 1:
        return str(seconds * 1000), seconds
    iso = datetime.fromtimestamp(seconds, timezone.utc)
    return (
        iso.strftime("%Y-%m-%dT%H:%M:%SZ") if form == 2 else f"{iso:%Y-%m-%d %H:%M:%S}"
    ), seconds


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # empty or not a number: the row is rejected or has no rating


def _clean(text: str | None) -> str | None:
    return text.strip() if text is not None and text.strip() else None


class Builder:
    """Expands a ``Spec`` into behaviour and review rows."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.behaviour: list[Row] = []
        self.reviews: list[Row] = []
        self.attachable: list[Row] = []  # plain valid behaviour rows without a review yet

    def build(self) -> tuple[list[Row], list[Row]]:
        for rows, cases, weights, n, make in (
            (self.behaviour, BEHAVIOUR_CASES, self.spec.behaviour_weights, BEHAVIOUR_ROWS, self._b),
            (self.reviews, REVIEW_CASES, self.spec.review_weights, REVIEW_ROWS, self._r),
        ):
            # Every case at least 3 times, the rest as the drawn weights say (valid weighs most).
            names = [c for c in cases for _ in range(3)]
            pool = [c for c in cases for _ in range(weights[c] + (20 if c == "valid" else 0))]
            names += self.rng.choices(pool, k=n - len(names))
            for case in names:
                rows.append(make(case, len(rows)))
        return self.behaviour, self.reviews

    # -- shared -----------------------------------------------------------------------------

    def _user(self) -> str:
        return f"U{self.rng.randrange(200)}"

    def _shared(self, case: str, user: str, item: str) -> tuple[bytes, bytes, str, int | None]:
        """user bytes, item bytes, ts text, epoch seconds (None when invalid) for ``case``."""
        ts, seconds = _ts(self.rng)
        u, i = user.encode(), item.encode()
        if case == "valid_min_ts":
            ts, seconds = self.rng.choice(["1990-01-01T00:00:00Z", "631152000"]), 631152000
        elif case == "valid_latest_ts":
            latest = NOW + timedelta(hours=23)  # the job starts later: its bound is later still
            ts, seconds = latest.strftime("%Y-%m-%dT%H:%M:%SZ"), int(latest.timestamp())
        elif case == "bad_utf8_user":
            u = (
                user[:1].encode()
                + self.rng.choice([b"\xff", b"\xfe\xfe", b"\x80"])
                + user[1:].encode()
            )
        elif case == "bad_utf8_item":
            i = item.encode() + b"\xff"
        elif case == "literal_fffd_user":
            u = f"{user}\ufffd".encode()
        elif case == "ws_user":
            u = self.rng.choice(WHITESPACE).format(user).encode()
        elif case == "ws_item":
            i = self.rng.choice(WHITESPACE).format(item).encode()
        elif case == "control_user":
            u = (user[:1] + self.rng.choice(CONTROL) + user[1:]).encode()
        elif case == "missing_user":
            u = b""
        elif case == "year_3000":
            ts = "3000-01-01T00:00:00Z"
        elif case == "year_3000_seconds":
            ts = "32503680000"
        elif case == "two_days_ahead":
            ts = (NOW + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif case == "year_minus_1000":
            ts = "-1000-01-01T00:00:00Z"
        elif case == "epoch_0":
            ts = "0"
        elif case == "second_before_min":
            ts = "631151999"
        elif case == "not_a_time":
            ts = self.rng.choice(["yesterday", "2020-13-45", "12:00"])
        return u, i, ts, seconds

    def _valid_key(self, case: str, user: str, item: str) -> tuple[str, str] | None:
        if case in ("valid", "valid_min_ts", "valid_latest_ts", "attached"):
            return user, item
        if self.spec.id_whitespace == "trim" and case in ("ws_user", "ws_item"):
            return user, item  # trimmed: the documented normalisation
        return None

    def _finish(self, row: Row, case: str, cases: dict, rows: list[Row]) -> Row:
        if case == "extra_field":
            row.fields.insert(self.rng.randrange(1, len(row.fields) + 1), b"surplus")
        elif case == "missing_field":
            del row.fields[self.rng.randrange(1, len(row.fields))]  # never the tag
        if row.key is None:
            row.reason = cases[case]
        return row

    def _duplicate(self, rows: list[Row]) -> Row | None:
        originals = [r for r in rows if r.values.get("case") == "valid"]
        if not originals:
            return None
        original = self.rng.choice(originals)
        return Row(original.tag, list(original.fields), "duplicate row")

    # -- behaviour --------------------------------------------------------------------------

    def _b(self, case: str, index: int) -> Row:
        if case == "duplicate" and (copy := self._duplicate(self.behaviour)):
            return copy
        case = "valid" if case == "duplicate" else case
        tag, user, item = f"b{index}", self._user(), f"B{index}"
        u, i, ts, seconds = self._shared(case, user, item)
        event = self.rng.choice(["rating", "click", "purchase"])
        stars = self.rng.choice(["1", "2", "3.5", "4", "5"])
        if event != "rating" and self.rng.random() < 0.5:
            stars = ""
        if case == "rating_missing":
            event, stars = "rating", ""
        elif case == "unknown_event":
            event = self.rng.choice(["wishlist", "Click", ""])
        elif case == "rating_out_of_range":
            stars = self.rng.choice(["0", "9", "5.5"])
        elif case == "rating_not_a_number":
            stars = self.rng.choice(["five", "4 stars"])
        fields = [tag.encode(), _field(u, self.rng), _field(i, self.rng), event.encode()]
        fields += [stars.encode(), ts.encode()]
        row = Row(tag, fields, key=self._valid_key(case, user, item))
        row.values = {
            "case": case,
            "event_type": event,
            "rating": _number(stars),
            "ts": seconds,
            "review_text": None,
            "origin": "behaviour",
        }
        if case == "valid":
            self.attachable.append(row)
        return self._finish(row, case, BEHAVIOUR_CASES, self.behaviour)

    # -- reviews ----------------------------------------------------------------------------

    def _text(self) -> str | None:
        return self.rng.choice(self.spec.texts + [""])

    def _r(self, case: str, index: int) -> Row:
        if case == "duplicate" and (copy := self._duplicate(self.reviews)):
            return copy
        case = "valid" if case == "duplicate" else case
        if case == "attached" and not self.attachable:
            case = "valid"
        tag, user, item = f"r{index}", self._user(), f"R{index}"
        target = None
        if case == "attached":
            target = self.attachable.pop(self.rng.randrange(len(self.attachable)))
            user, item = target.key
        u, i, ts, seconds = self._shared(case, user, item)
        stars = self.rng.choice(["", "1", "2.5", "4", "5"])
        if case == "rating_out_of_range":
            stars = self.rng.choice(["0", "9"])
        elif case == "rating_not_a_number":
            stars = "great"
        title, body = self._text(), self._text()
        body_bytes = body.encode()
        if case == "bad_utf8_text":
            body_bytes = body_bytes + b" \xff\xfe caf\xe9"
        fields = [tag.encode(), _field(u, self.rng), _field(i, self.rng), stars.encode()]
        fields += [_field(title.encode(), self.rng), _field(body_bytes, self.rng), ts.encode()]
        row = Row(tag, fields, key=self._valid_key(case, user, item))
        text = ". ".join(t for t in (_clean(title), _clean(body)) if t) or None
        rating = _number(stars)
        row.values = {
            "case": case,
            "event_type": "review",
            "rating": rating,
            "ts": seconds,
            "review_text": text,
            "origin": "review",
        }
        if target is not None:
            # Attached to the behaviour row of its pair: that row's event, time and rating (the
            # review's when the event has none), the review's text.
            target.values |= {
                "review_text": text,
                "origin": "behaviour+review",
                "rating": target.values["rating"]
                if target.values["rating"] is not None
                else rating,
            }
            row.key = None
            row.values["attached_to"] = target.tag
        return self._finish(row, case, REVIEW_CASES, self.reviews)


def _write(path: Path, header: str, rows: list[Row]) -> str:
    path.write_bytes(
        header.encode() + b"\n" + b"\n".join(b",".join(r.fields) for r in rows) + b"\n"
    )
    return str(path)


def _as_read(value: bytes) -> str:
    """A field as the CSV reader gives it: quotes undone, bad bytes as U+FFFD."""
    text = value.decode("utf-8", errors="replace")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=specs)
def test_ingest_accounts_for_every_row_and_keeps_valid_values(spark, spec):
    behaviour, reviews = Builder(spec).build()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cfg = load_config(
            [],
            [
                f"run.work_dir={root / 'work'}",
                "source.kind=generic",
                "source.generic.format=csv",
                f"ingest.id_whitespace={spec.id_whitespace}",
                f"source.generic.behaviour.path="
                f"{_write(root / 'b.csv', 'n,customer,sku,action,stars,ts', behaviour)}",
                "source.generic.behaviour.columns={user_id: customer, item_id: sku, "
                "event_type: action, rating: stars, event_ts: ts}",
                f"source.generic.reviews.path="
                f"{_write(root / 'r.csv', 'n,customer,sku,stars,title,body,ts', reviews)}",
                "source.generic.reviews.columns={user_id: customer, item_id: sku, rating: stars, "
                "summary: title, review_text: body, event_ts: ts}",
            ],
        )

        counts = ingest_job.run(spark, cfg, "prop")

        warehouse = Warehouse.from_config(spark, cfg, "prop")
        interactions = warehouse.read("interactions").select(
            "user_id",
            "item_id",
            "event_type",
            "rating",
            (F.unix_micros("event_ts") / 1_000_000).cast("long").alias("ts"),
            "review_text",
            "origin",
            "split",
        )
        got = {(r.user_id, r.item_id): r.asDict() for r in interactions.collect()}
        rejects = [(r.raw, r.reason) for r in warehouse.read("rejects").collect()]

    # 1. Every row is accounted for: read, then kept, rejected or attached.
    rows = behaviour + reviews
    attached = [r for r in reviews if "attached_to" in r.values and r.reason is None]
    assert (counts["behaviour_in"], counts["reviews_in"]) == (len(behaviour), len(reviews))
    assert len(got) + len(rejects) + len(attached) == len(rows)
    assert counts["interactions"] == len(got) and counts["rejects"] == len(rejects)
    assert counts["reviews_attached"] == len(attached)

    # 2. Each valid row is in interactions with its values as they came.
    expected = {r.key: r.values for r in rows if r.key is not None}
    by_key = {r.key or (r.tag, ""): r for r in rows}
    assert set(got) == set(expected), {
        key: (by_key.get(key), [r for r in rows if key[1] and r.tag[1:] == key[1][1:]])
        for key in set(got) ^ set(expected)
    }
    for key, values in expected.items():
        out = got[key]
        want = {k: values[k] for k in ("event_type", "rating", "ts", "review_text", "origin")}
        assert {k: out[k] for k in want} == want, (key, values["case"])
        assert out["split"] in {"train", "validation", "test"}

    # 3. Each bad row is in rejects with its reason; raw holds every field as read, in order.
    by_tag: dict[str, list[Row]] = {}
    for row in rows:
        if row.reason is not None:
            by_tag.setdefault(row.tag, []).append(row)
    seen: Counter[str] = Counter()
    for raw, reason in rejects:
        tag = raw.split(",", 1)[0]
        candidates = [r for r in by_tag.get(tag, []) if reason.startswith(r.reason)]
        assert candidates, (tag, reason, raw)
        row = candidates[0]
        if reason.startswith("event_ts after "):
            # The bound is said, and it is the job's start + 1 day: later than NOW + 1 day.
            bound = datetime.strptime(reason, "event_ts after %Y-%m-%dT%H:%M:%SZ")
            assert bound.replace(tzinfo=timezone.utc) >= NOW + timedelta(days=1)
        fields = next(csv.reader(io.StringIO(raw, newline="")))
        assert fields == [_as_read(f) for f in row.fields], (row.values.get("case"), raw)
        seen[tag] += 1
    assert seen == Counter({tag: len(bad) for tag, bad in by_tag.items()})
