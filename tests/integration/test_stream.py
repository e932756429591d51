"""The stream as an operator meets it: files landed in a folder, a malformed one among them,
folded into the touched users' lists against the finished tiny run; a kill -9 in the middle of
a micro-batch and a restart count every event once; the lists equal the batch's for the same
history. The stream works on a copy of the run's warehouse (it writes new snapshots)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hybridrec.store import catalog
from hybridrec.views import STREAM_TABLES

pytestmark = pytest.mark.slow

HEADER = "user_id,item_id,event_type,event_ts,rating,review_text\n"


@pytest.fixture
def stream_home(analyst_run, tmp_path, wheel_install, tiny_settings):
    """A work dir whose warehouse is a copy of the run's, and the commands to reach it."""
    source = analyst_run.work_dir / "warehouse"
    shutil.copytree(source, tmp_path / "warehouse", ignore=shutil.ignore_patterns("_lock.json"))
    overlay = tmp_path / "stream.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "run": {
                    "work_dir": str(tmp_path),
                    "warehouse_dir": str(tmp_path / "warehouse"),
                },
                "stream": {"max_files_per_trigger": 1},
            }
        )
    )
    conf = [*analyst_run.conf_args(), "--conf", str(overlay)]
    home = StreamHome(tmp_path, conf, str(wheel_install.hybridrec), analyst_run)
    home.run_k = tiny_settings["score"]["k"]
    return home


class StreamHome:
    def __init__(self, root: Path, conf: list[str], hybridrec: str, run):
        self.root, self.conf, self.hybridrec, self.run = root, conf, hybridrec, run
        self.landing = root / "landing"
        self.landing.mkdir()

    def land(self, name: str, text: str | bytes) -> None:
        # Written aside and renamed in, as a producer should: a reader never sees half a file.
        partial = self.landing / f".{name}.part"
        partial.write_bytes(text if isinstance(text, bytes) else text.encode())
        partial.rename(self.landing / name)

    def stream(self, *extra: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [self.hybridrec, "stream", *self.conf, "--available-now", *extra],
            cwd=self.root,
            env=self.run.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            **kwargs,
        )

    def sql(self, statement: str) -> list[dict]:
        done = subprocess.run(
            [self.hybridrec, "sql", *self.conf, "--format", "json", "--max-rows", "100000"]
            + [statement],
            cwd=self.root,
            env=self.run.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def _events(users: list[str], items: list[str], day: int, texts: bool = True) -> str:
    rows = []
    for n, (user, item) in enumerate(zip(users, items, strict=True)):
        text = f'"A bold style, item {item}"' if texts and n % 3 == 0 else ""
        rows.append(f"{user},{item},rating,2026-11-{day:02d}T10:{n:02d}:00Z,{1 + n % 5},{text}")
    return HEADER + "\n".join(rows) + "\n"


def test_three_files_one_malformed_reach_the_current_view(stream_home):
    stream_home.land("a.csv", _events(["new1", "new1", "u1"], ["i1", "i2", "i3"], 20))
    stream_home.land("b.csv", _events(["new2", "u2"], ["i4", "i5"], 21))
    # A row short of fields, one with too many, one without a user, and bytes that are not text.
    stream_home.land(
        "c.csv",
        HEADER.encode()
        + b"new3,i6,click\nnew3,i7,click,2026-11-22T10:00:00Z,,,extra\n"
        + b",i8,click,2026-11-22T10:00:00Z,,\n\xff\xfe\x00,i9\n",
    )
    out = _finish(stream_home.stream())
    assert "stream batch 2:" in out, out[-3000:]

    progress = stream_home.sql("SELECT * FROM hybridrec.stream_progress ORDER BY batch_id")
    assert [p["files"] for p in progress] == [1, 1, 1]
    assert sum(p["rows_in"] for p in progress) == 9
    assert sum(p["folded"] for p in progress) == 5
    assert sum(p["rejected"] for p in progress) == 4
    rejects = stream_home.sql(
        "SELECT reason FROM hybridrec.rejects WHERE run_id LIKE 'stream-%' ORDER BY reason"
    )
    assert len(rejects) == 4 and {"missing user_id"} <= {r["reason"] for r in rejects}

    current = stream_home.sql(
        "SELECT user_id, list_source, count(*) AS n, min(rank) AS top, max(rank) AS last "
        "FROM hybridrec.recommendations_current GROUP BY user_id, list_source"
    )
    by_user = {r["user_id"]: r for r in current}
    k = stream_home.run_k
    for user in ("new1", "new2", "u1", "u2"):
        assert by_user[user]["list_source"] == "live"
        assert (by_user[user]["n"], by_user[user]["top"], by_user[user]["last"]) == (k, 1, k)
    assert "new3" not in by_user  # all of new3's rows were rejected
    batch_users = stream_home.sql(
        "SELECT count(DISTINCT user_id) AS n FROM hybridrec.recommendations_latest"
    )[0]["n"]
    assert len(by_user) == batch_users + 2  # two new users; u1 and u2 now live
    # A live list never offers what the user just had.
    offered = stream_home.sql(
        "SELECT item_id FROM hybridrec.recommendations_current WHERE user_id = 'new1'"
    )
    assert not {"i1", "i2"} & {r["item_id"] for r in offered}

    # The touched users' interests, from their whole history against the serving run's topics:
    # u1's count the event it just had.
    live = {r["user_id"]: r for r in stream_home.sql("SELECT * FROM hybridrec.user_interests_live")}
    assert {"new1", "new2", "u1", "u2"} <= set(live)
    labels = {r["label"] for r in stream_home.sql("SELECT label FROM hybridrec.topics_latest")}
    assert all(set(r["tags"]) <= labels and r["tags"] for r in live.values())
    batch_u1 = stream_home.sql(
        "SELECT events FROM hybridrec.user_interests_latest WHERE user_id = 'u1'"
    )[0]
    history_u1 = stream_home.sql(
        "SELECT count(*) AS n FROM hybridrec.interactions_latest i "
        "JOIN hybridrec.item_topics_latest t ON t.item_id = i.item_id WHERE i.user_id = 'u1'"
    )[0]
    assert live["u1"]["events"] == history_u1["n"] + 1 > batch_u1["events"]
    assert live["new1"]["events"] == 2  # i1 and i2, its first events
    current = {
        r["user_id"]: r
        for r in stream_home.sql("SELECT user_id, source FROM hybridrec.user_interests_current")
    }
    assert {u for u, r in current.items() if r["source"] == "live"} == set(live)
    batch_users = stream_home.sql("SELECT count(*) AS n FROM hybridrec.user_interests_latest")
    assert len(current) == batch_users[0]["n"] + 2  # new1 and new2
    # A live list names its user's live tags, and an interest only among them.
    lists = stream_home.sql(
        "SELECT user_id, user_tags, interest, interest_topic_id "
        "FROM hybridrec.recommendations_current WHERE list_source = 'live'"
    )
    assert {r["user_id"]: r["user_tags"] for r in lists} == {
        user: live[user]["tags"] for user in ("new1", "new2", "u1", "u2")
    }
    for row in lists:
        if row["interest"] is not None:
            assert row["interest_topic_id"] in live[row["user_id"]]["tag_topic_ids"]

    columns = {
        name: set(stream_home.sql(f"SELECT * FROM hybridrec.{name} LIMIT 1")[0])
        for name in STREAM_TABLES
    }
    for name, found in columns.items():
        assert found == set(catalog.TABLES[name].columns), name

    # Landed again under another name: every row is an exact repeat.
    stream_home.land("a-again.csv", _events(["new1", "new1", "u1"], ["i1", "i2", "i3"], 20))
    _finish(stream_home.stream())
    last = stream_home.sql("SELECT * FROM hybridrec.stream_progress ORDER BY batch_id DESC")[0]
    assert (last["rows_in"], last["duplicates"], last["folded"]) == (3, 3, 0)


def test_a_kill_9_mid_batch_and_a_restart_count_every_event_once(stream_home):
    users = [f"k{n}" for n in range(6)]
    for n in range(3):
        stream_home.land(f"{n}.csv", _events(users, [f"i{(n + j) % 40}" for j in range(6)], n + 1))
    first = stream_home.stream()
    # Killed (process group, no chance to clean up) once batch 1 has written its events but
    # before its progress row: its snapshots exist, unpublished in the current view.
    seen = ""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = first.stdout.readline()
        seen += line
        if "events_live run stream-" in line and "-000000001:" in line:
            break
        assert line or first.poll() is None, seen[-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL

    _finish(stream_home.stream())
    progress = stream_home.sql("SELECT * FROM hybridrec.stream_progress ORDER BY batch_id")
    assert [p["batch_id"] for p in progress] == list(range(3))
    # Every event is new (its own user, item and time): a replay under another snapshot would
    # have found its first attempt's events and called them duplicates.
    assert [(p["rows_in"], p["folded"]) for p in progress] == [(6, 6)] * 3
    folded = stream_home.sql(
        "SELECT user_id, item_id, event_ts, count(*) AS n FROM hybridrec.events_live "
        "GROUP BY ALL HAVING count(*) > 1"
    )
    assert folded == []  # no event folded twice
    lists = stream_home.sql(
        "SELECT user_id, count(*) AS n, count(DISTINCT rank) AS ranks "
        "FROM hybridrec.recommendations_current WHERE user_id LIKE 'k%' GROUP BY user_id"
    )
    k = stream_home.run_k
    assert sorted(r["user_id"] for r in lists) == users
    assert all(r["n"] == r["ranks"] == k for r in lists)


@pytest.mark.parametrize("path", ["spark", "driver"])
def test_a_live_list_for_a_history_equals_the_batch_list(spark, analyst_run, tiny_settings, path):
    """Folded in from exactly the history the batch ranked from, the live path (fold-in, text
    vectors, the one ranking function) gives the batch's lists: as Spark jobs (a large
    micro-batch) and in the driver (a small one)."""
    from pyspark.sql import functions as F

    from hybridrec.config.loader import load_config
    from hybridrec.constants import INTERACTIONS, RECOMMENDATIONS, SPLIT_COL, TEST
    from hybridrec.models.folds import history
    from hybridrec.store.tables import Warehouse
    from hybridrec.streaming import live
    from hybridrec.streaming.events import EVENT_COLUMNS

    cfg = load_config(analyst_run.conf)
    warehouse = Warehouse(
        spark,
        str(analyst_run.work_dir / "warehouse"),
        cfg.run.database,
        analyst_run.run_id,
        catalog_writes=False,  # read only: this run's catalog belongs to its own process
    )
    serving = live.load_serving(spark, cfg, analyst_run.run_id, warehouse)
    fitted_on = history(warehouse.read(INTERACTIONS), TEST).select(*EVENT_COLUMNS)
    if path == "driver":
        from hybridrec.streaming import local

        state = local.load(serving)
        try:
            lists, encoded = local.live_lists(
                serving, state, fitted_on.toPandas(), cfg, exclude_run="none"
            )
        finally:
            state.release()
        assert encoded.empty  # every review's vector came from the run's own
        _assert_same_lists(lists, warehouse.read(RECOMMENDATIONS).toPandas())
        return
    no_new_texts = spark.createDataFrame(
        [], "text_hash string, model_id string, embedding array<float>"
    )
    lists = live.live_lists(
        serving,
        fitted_on.withColumn(SPLIT_COL, F.lit("train")),
        no_new_texts,
        live.text_cache(serving, snapshot="none"),
        cfg,
    ).toPandas()
    _assert_same_lists(lists, warehouse.read(RECOMMENDATIONS).toPandas())


def _assert_same_lists(lists, batch):
    def ranked(frame):
        frame = frame.sort_values(["user_id", "rank"])
        return frame.groupby("user_id")["item_id"].apply(list).to_dict()

    live_items, batch_items = ranked(lists), ranked(batch)
    assert set(live_items) == set(batch_items)
    same = sum(live_items[u] == batch_items[u] for u in batch_items)
    assert same == len(batch_items), f"{same} of {len(batch_items)} lists equal"
    merged = lists.merge(batch, on=["user_id", "rank"], suffixes=("_live", "_batch"))
    assert (merged["score_live"] - merged["score_batch"]).abs().max() < 1e-3
