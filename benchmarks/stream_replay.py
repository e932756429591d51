"""What freshness is worth: the stale batch list against the live list, on real data replayed.

    python benchmarks/stream_replay.py --data movielens:/path/to/ml-latest-small \
        [--cut 0.9] [--chunks 12] [--work /tmp/replay] [--conf FILE] [--set key=value]
    python benchmarks/stream_replay.py --data amazon:/path/to/Magazine_Subscriptions_5.json.gz

The batch pipeline is run on the events up to a time cut (the ``--cut`` quantile of event
times); the later events are landed in time order as ``--chunks`` files and replayed through
``hybridrec stream --available-now``, one file per micro-batch. Each replayed event is scored
against the list its user had just before it: the stale batch list, and the live one (the newest
micro-batch before the event's own that touched the user, else the batch list). A user the batch
did not know has no batch list: their stale list is the batch's most popular items (by users),
what a site shows anyone it does not know, until the stream gives them their own. An event on an
item the user already had is left out: no list offers it.
Prints HR@K and NDCG@K of both, their difference with a 95% interval (per-user means, normal
approximation over users) and the counts, for the users the batch knew and for all users.
Granularity is a chunk: events of the same chunk are folded together, so an event does not see
the ones just before it in its own chunk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def load(kind: str, path: Path) -> pd.DataFrame:
    """user_id, item_id, rating, ts (epoch seconds), text: one row per event."""
    if kind == "movielens":
        name = next(p for p in ("ratings.csv", "ratings.csv.gz") if (path / p).exists())
        df = pd.read_csv(path / name, dtype={"userId": str, "movieId": str})
        return pd.DataFrame(
            {
                "user_id": df.userId,
                "item_id": df.movieId,
                "rating": df.rating,
                "ts": df.timestamp.astype("int64"),
                "text": None,
            }
        )
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    df = pd.DataFrame(rows)
    return pd.DataFrame(
        {
            "user_id": df.reviewerID.astype(str),
            "item_id": df.asin.astype(str),
            "rating": df.overall,
            "ts": df.unixReviewTime.astype("int64"),
            "text": df.get("reviewText"),
            "raw": [json.dumps(r) for r in rows],
        }
    )


def write_batch_source(kind: str, path: Path, before: pd.DataFrame, cut: int, out: Path) -> list:
    """The source files of the events up to the cut, and the --set arguments that read them."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "movielens":
        ratings = before.rename(
            columns={"user_id": "userId", "item_id": "movieId", "ts": "timestamp"}
        )[["userId", "movieId", "rating", "timestamp"]]
        ratings.to_csv(out / "ratings.csv", index=False)
        for extra in ("movies.csv", "tags.csv"):
            found = [p for p in (path / extra, path / f"{extra}.gz") if p.exists()]
            if found:
                table = pd.read_csv(found[0], dtype=str)
                if "timestamp" in table:
                    table = table[table.timestamp.astype("int64") <= cut]
                table.to_csv(out / extra, index=False)
        return ["--set", "source.kind=movielens", "--set", f"source.movielens.path={out}"]
    with gzip.open(out / "reviews.json.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in before["raw"])
    return [
        "--set",
        "source.kind=amazon",
        "--set",
        f"source.amazon.reviews_path={out / 'reviews.json.gz'}",
    ]


def land(kind: str, after: pd.DataFrame, chunks: int, landing: Path) -> pd.Series:
    """The later events as ``chunks`` files in time order; each event's chunk."""
    landing.mkdir(parents=True, exist_ok=True)
    order = after.sort_values("ts", kind="stable").reset_index(drop=True)
    chunk = pd.Series(np.minimum(np.arange(len(order)) * chunks // len(order), chunks - 1))
    stamp = time.time() - chunks - 10
    for c in range(chunks):
        part = order[chunk.to_numpy() == c]
        target = landing / f"{c:05d}.{'csv' if kind == 'movielens' else 'json'}"
        if kind == "movielens":
            frame = pd.DataFrame(
                {
                    "user_id": part.user_id,
                    "item_id": part.item_id,
                    "event_type": "rating",
                    "event_ts": part.ts,
                    "rating": part.rating,
                    "review_text": "",
                }
            )
            frame.to_csv(target, index=False)
        else:
            target.write_text("".join(line + "\n" for line in part["raw"]), encoding="utf-8")
        os.utime(target, (stamp + c, stamp + c))  # the file source takes the oldest first
    return order.assign(chunk=chunk)


def hybridrec(*args: str, log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, stdout=out, stderr=out
        )
    if done.returncode:
        sys.exit(f"hybridrec {args[0]} failed ({done.returncode}): see {log}")


def metrics(lists: dict, events: pd.DataFrame, k: int) -> np.ndarray:
    """Per event: [hit, ndcg] of its item in the list ``lists`` gives for it."""
    out = np.zeros((len(events), 2))
    for row, (key, item) in enumerate(zip(events["key"], events["item_id"], strict=True)):
        ranked = lists.get(key, [])[:k]
        if item in ranked:
            out[row] = (1.0, 1.0 / math.log2(ranked.index(item) + 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="movielens:<folder> or amazon:<file>")
    parser.add_argument("--cut", type=float, default=0.9)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--work", default="/tmp/hybridrec-replay")
    parser.add_argument("--conf", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument(
        "--reuse-batch", action="store_true", help="keep the batch run of an earlier replay"
    )
    args = parser.parse_args()
    kind, path = args.data.split(":", 1)
    path = Path(path)
    work = Path(args.work)
    log = work / "replay.log"
    work.mkdir(parents=True, exist_ok=True)
    events = load(kind, path)
    cut = int(events.ts.quantile(args.cut))
    before, after = events[events.ts <= cut], events[events.ts > cut]
    known = set(before.user_id)
    settings = [a for c in ["conf/local.yaml", *args.conf] for a in ("--conf", c)]
    settings += [a for s in args.set for a in ("--set", s)]
    settings += ["--set", f"run.work_dir={work / 'work'}", "--set", f"score.k={args.k}"]
    source = write_batch_source(kind, path, before, cut, work / "source")
    started = time.time()
    db = work / "work" / "warehouse" / "hybridrec.db"
    # An earlier replay's stream state goes whatever happens: the stream replays from the start.
    for folder in [work / "landing", work / "work" / "stream_checkpoint"] + [
        db / t for t in ("events_live", "recommendations_live", "stream_progress")
    ]:
        shutil.rmtree(folder, ignore_errors=True)
    for snapshot in db.glob("*/run_id=stream-*"):
        shutil.rmtree(snapshot)
    if not (args.reuse_batch and (db / "recommendations").is_dir()):
        hybridrec("run", *settings, *source, log=log)
    batch_seconds = time.time() - started
    replayed = land(kind, after, args.chunks, work / "landing")
    stream = [
        "--set",
        f"stream.landing_dir={work / 'landing'}",
        "--set",
        "stream.max_files_per_trigger=1",
    ]
    if kind == "amazon":
        stream += ["--set", "stream.format=amazon"]
    started = time.time()
    hybridrec("stream", *settings, *source, *stream, "--available-now", log=log)
    stream_seconds = time.time() - started

    con = duckdb.connect()
    live = con.execute(
        f"SELECT user_id, item_id, rank, batch_id, serving_run_id FROM read_parquet("
        f"'{db}/recommendations_live/*/*.parquet') ORDER BY batch_id, user_id, rank"
    ).df()
    # The stale lists are the serving run's (a work dir may keep earlier batch runs too).
    (serving,) = live.serving_run_id.unique()
    batch = con.execute(
        f"SELECT user_id, item_id, rank FROM read_parquet('{db}/recommendations/*/*.parquet', "
        "hive_partitioning = true) WHERE run_id = ? ORDER BY user_id, rank",
        [serving],
    ).df()
    files = con.execute(
        f"SELECT batch_id, files FROM read_parquet('{db}/stream_progress/*/*.parquet')"
    ).df()
    assert (files.files == 1).all() and sorted(files.batch_id) == list(range(args.chunks)), files

    stale_lists = batch.groupby("user_id")["item_id"].apply(list).to_dict()
    by_users = before.drop_duplicates(["user_id", "item_id"]).item_id.value_counts(sort=False)
    # ties by item id, so the list does not depend on the order the data came in
    popular = (
        (
            by_users.rename("users")
            .reset_index()
            .sort_values(["users", "item_id"], ascending=[False, True])
        )
        .item_id.head(args.k)
        .tolist()
    )
    live_by_batch = live.groupby(["user_id", "batch_id"])["item_id"].apply(list).to_dict()
    # The list a user had before chunk c: their newest live list of a batch < c, else the batch's.
    newest: dict[str, list] = {}
    current: dict[tuple[str, int], list] = {}
    touched = live.groupby("batch_id")["user_id"].unique().to_dict()
    users = set(replayed.user_id)
    for c in range(args.chunks):
        for user in users:
            current[(user, c)] = newest.get(user, stale_lists.get(user, popular))
        for user in touched.get(c, []):
            newest[user] = live_by_batch[(user, c)]
    # Items the user had before each event (the batch's history, then earlier replayed events).
    had = before.groupby("user_id")["item_id"].apply(set).to_dict()
    new_item = []
    for user, item in zip(replayed.user_id, replayed.item_id, strict=True):
        seen = had.setdefault(user, set())
        new_item.append(item not in seen)
        seen.add(item)
    scored = replayed[np.array(new_item)].copy()
    scored["key"] = list(zip(scored.user_id, scored.chunk, strict=True))
    stale = metrics({(u, c): stale_lists.get(u, popular) for u, c in scored.key}, scored, args.k)
    fresh = metrics(current, scored, args.k)
    per_event = pd.DataFrame(
        {
            "user_id": scored.user_id.to_numpy(),
            "stale_hr": stale[:, 0],
            "live_hr": fresh[:, 0],
            "stale_ndcg": stale[:, 1],
            "live_ndcg": fresh[:, 1],
        }
    )
    per_user = per_event.groupby("user_id").mean()
    per_user["known"] = per_user.index.isin(known)
    print(
        f"{kind} {path.name}: cut at the {args.cut:.0%} quantile, {len(before)} events in the "
        f"batch ({batch_seconds:.0f} s), {len(after)} replayed in {args.chunks} micro-batches "
        f"({stream_seconds:.0f} s), {len(scored)} on items new to their user "
        f"(means over users; a new user's stale list: the batch's {args.k} most popular items)"
    )
    print(
        f"{'users':<26} {'n':>5} {'metric':<8} {'stale':>8} {'live':>8} {'live-stale':>11} "
        f"{'95% interval':>22}"
    )
    for label, group in (
        ("known to the batch", per_user[per_user.known]),
        ("new since the batch", per_user[~per_user.known]),
        ("all", per_user),
    ):
        for name in ("hr", "ndcg"):
            diff = group[f"live_{name}"] - group[f"stale_{name}"]
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            low, high = diff.mean() - 1.96 * se, diff.mean() + 1.96 * se
            print(
                f"{label:<26} {len(group):>5} {name}@{args.k:<5} "
                f"{group[f'stale_{name}'].mean():>8.4f} {group[f'live_{name}'].mean():>8.4f} "
                f"{diff.mean():>+11.4f} [{low:+.4f}, {high:+.4f}]"
            )


if __name__ == "__main__":
    main()
