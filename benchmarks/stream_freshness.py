"""How fresh the stream keeps lists: seconds from an event landing to the user's updated list
being visible to a new query of ``recommendations_current``.

    python benchmarks/stream_freshness.py --conf conf/local.yaml --conf conf/quick.yaml \
        [--rates 2,5,20] [--seconds 60] [--text-share 0.33]

Run it after a batch run on that config. For each rate, a fresh stream (its own checkpoint,
``stream.trigger_seconds`` 1) runs as a service. Once it has served a first warm-up event (its
start, paid once per service, is not timed), a writer lands one file a second holding
``rate`` events (existing users and a few new ones, a ``--text-share`` of them with a review);
a poller asks DuckDB over the published snapshots (what ``hybridrec sql`` answers with, in a new
connection each time, every 0.2 s; an event counts as visible from the start of the first query
that saw it) which users' live lists have folded in which event times. Prints, per
rate: events landed and seen, freshness p50, p95 and max, the micro-batches' mean seconds and
how many texts they encoded. The stream's snapshots stay in the warehouse (``stream-*``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybridrec.analyst import sql_duckdb  # noqa: E402
from hybridrec.config.loader import load_config, work_path  # noqa: E402

HEADER = "user_id,item_id,event_type,event_ts,rating,review_text\n"
WORDS = [
    "bold",
    "minimal",
    "rustic",
    "vivid",
    "classic",
    "soft",
    "sturdy",
    "light",
    "warm",
    "bright",
]


# Event times and new users' names are unique to each run of the benchmark: an event folded by
# an earlier run would be dropped as a repeat, and a user's newer event would count as seen.
STARTED = datetime.now(timezone.utc).replace(microsecond=0)


def landed_events(rate: int, second: int, users: list[str], items: list[str], share: float):
    """``rate`` events of one second; event times are unique per user so each is traceable."""
    base = STARTED + timedelta(seconds=second) - timedelta(hours=1)
    rows, stamps = [], []
    for n in range(rate):
        fresh = f"fresh{STARTED:%H%M%S}_{rate}_{second}_{n}"
        user = random.choice(users) if random.random() > 0.1 else fresh
        stamp = base  # whole seconds: what ingest keeps of a time
        text = ""
        if random.random() < share:
            # Each review its own text: the encoder's work is part of what is measured.
            text = f'"{random.choice(WORDS)} and {random.choice(WORDS)}, as I hoped ({fresh})"'
        item = random.choice(items)
        rows.append(f"{user},{item},purchase,{stamp.isoformat()},,{text}")
        stamps.append((user, stamp))
    return HEADER + "\n".join(rows) + "\n", stamps


def visible(db_root: Path, database: str) -> set[tuple[str, datetime]]:
    """(user, event time) of every event of this benchmark in a committed micro-batch: once its
    ``stream_progress`` row is published, ``recommendations_current`` serves the user a list
    with the event folded in (its micro-batch's or a later one's)."""
    since = STARTED - timedelta(hours=2)
    _, rows = sql_duckdb.query(
        db_root,
        database,
        f"SELECT e.user_id, e.event_ts FROM {database}.events_live e "
        f"JOIN {database}.stream_progress p ON p.run_id = e.run_id "
        f"WHERE e.event_ts >= TIMESTAMP '{since:%Y-%m-%d %H:%M:%S}'",
        10_000_000,
    )
    return {(r["user_id"], r["event_ts"].replace(tzinfo=timezone.utc)) for r in rows}


def one_rate(args, settings: list[str], rate: int, users, items) -> dict:
    cfg = load_config(args.conf, args.set)
    db_root = Path(work_path(cfg, "warehouse_dir", "warehouse")) / f"{cfg.run.database}.db"
    work = Path(tempfile.mkdtemp(prefix=f"freshness-{rate}-"))
    landing = work / "landing"
    landing.mkdir()
    log_file = (work / "stream.log").open("w")  # noqa: SIM115 - the service outlives this block
    stream = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "stream", *settings]
        + ["--set", f"stream.landing_dir={landing}"]
        + ["--set", f"stream.checkpoint_dir={work / 'checkpoint'}"]
        + ["--set", "stream.trigger_seconds=1"],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    written: dict[tuple[str, datetime], float] = {}
    seen: dict[tuple[str, datetime], float] = {}
    stop = threading.Event()

    def write() -> None:
        # A service pays its start once (JVM, Python workers, the encoder's load, the serving
        # run's state): one event of its own goes first and the clock starts once it is served.
        warm_user = f"warmup{STARTED:%H%M%S}_{rate}"
        stamp = STARTED - timedelta(hours=1, seconds=1 + args.rate_index)
        review = f"a first review to encode ({warm_user})"  # new to the text cache
        (landing / ".warmup.part").write_text(
            f"{HEADER}{warm_user},{items[0]},purchase,{stamp.isoformat()},,{review}\n"
        )
        (landing / ".warmup.part").rename(landing / "warmup.csv")
        deadline = time.time() + args.warmup
        while time.time() < deadline:
            try:
                if any(user == warm_user for user, _ in visible(db_root, cfg.run.database)):
                    break
            except Exception:  # noqa: BLE001 - no live table yet
                pass
            time.sleep(0.5)
        for second in range(args.seconds):
            offset = second + 1_000 * args.rate_index  # each rate's events after the others'
            text, stamps = landed_events(rate, offset, users, items, args.text_share)
            part = landing / f".{second}.part"
            part.write_text(text)
            part.rename(landing / f"{second:06d}.csv")
            now = time.time()
            written.update({key: now for key in stamps})
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
        stop.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = None
    while True:
        # What a query sees, it saw from its start: the query's own seconds are not the
        # stream's (a poll over every snapshot takes about 0.4 s here).
        now = time.time()
        try:
            folded = visible(db_root, cfg.run.database)
        except Exception:  # noqa: BLE001 - no live table yet
            folded = set()
        for key in folded & written.keys():
            seen.setdefault(key, now)
        if stop.is_set():
            deadline = deadline or now + args.drain
            if len(seen) == len(written) or now > deadline:
                break
        time.sleep(0.2)
    os.killpg(stream.pid, signal.SIGTERM)
    stream.wait(timeout=60)
    log_file.close()
    delays = sorted(seen[k] - written[k] for k in seen)
    began = datetime.fromtimestamp(min(written.values(), default=0), timezone.utc)
    _, progress = sql_duckdb.query(
        db_root,
        cfg.run.database,
        "SELECT count(*) AS batches, avg(seconds) AS seconds, sum(texts_encoded) AS texts "
        f"FROM {cfg.run.database}.stream_progress "
        f"WHERE committed_at >= TIMESTAMP '{began:%Y-%m-%d %H:%M:%S}'",
        10,
    )

    def quantile(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")

    return {
        "rate": rate,
        "landed": len(written),
        "seen": len(seen),
        "p50": quantile(0.5),
        "p95": quantile(0.95),
        "max": delays[-1] if delays else float("nan"),
        "batches": progress[0]["batches"],
        "batch_s": progress[0]["seconds"] or float("nan"),
        "texts": progress[0]["texts"] or 0,
        "log": str(work / "stream.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rates", default="2,5,20")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--text-share", type=float, default=0.33)
    parser.add_argument(
        "--warmup",
        type=float,
        default=240.0,
        help="seconds at most for the stream to start and serve a first event (not timed)",
    )
    parser.add_argument(
        "--drain", type=float, default=120.0, help="seconds to wait after the last file"
    )
    args = parser.parse_args()
    random.seed(7)
    settings = [a for path in args.conf for a in ("--conf", path)]
    settings += [a for item in args.set for a in ("--set", item)]
    cfg = load_config(args.conf, args.set)
    db_root = Path(work_path(cfg, "warehouse_dir", "warehouse")) / f"{cfg.run.database}.db"
    _, known = sql_duckdb.query(
        db_root,
        cfg.run.database,
        f"SELECT DISTINCT user_id, item_id FROM {cfg.run.database}.interactions_latest",
        10_000_000,
    )
    users = sorted({r["user_id"] for r in known})
    items = sorted({r["item_id"] for r in known})
    print(f"cpu cores: {os.cpu_count()}; {len(users)} users, {len(items)} items in the serving run")
    print(
        f"{'rate/s':>6} {'landed':>7} {'seen':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
        f"{'batches':>8} {'batch s':>8} {'texts':>6}"
    )
    rates = [int(r) for r in args.rates.split(",")]
    for index, rate in enumerate(rates):
        args.rate_index = index
        r = one_rate(args, settings, rate, users, items)
        print(
            f"{r['rate']:>6} {r['landed']:>7} {r['seen']:>6} {r['p50']:>7.1f} {r['p95']:>7.1f} "
            f"{r['max']:>7.1f} {r['batches']:>8} {r['batch_s']:>8.1f} {r['texts']:>6}   {r['log']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
