"""stream: events landed in a folder -> recommendations_live, between daily batch runs.

    hybridrec stream --conf conf/local.yaml [--available-now]
    spark-submit jobs/stream.py --conf conf/local.yaml [--available-now]

Spark Structured Streaming over ``stream.landing_dir``: each micro-batch reads the files landed
since the last one, validates their rows with ingest's checks (bad rows to ``rejects``, a bad
file never stops the stream), drops exact repeats of events already seen, and folds the events
into the touched users against the serving run (the newest complete batch run; see
``hybridrec.streaming.live``). Every table a micro-batch writes is a snapshot of its own
(``stream-<stream start>-<batch>``), published whole and replaced whole when Spark replays the
batch after a crash; ``stream_progress`` is written last and is what makes a micro-batch count
(``recommendations_current`` reads only batches that have it): exactly once, with the query's
checkpoint under the work dir. A second stream on one warehouse is refused by its lock; the
batch holds another, so the two never block each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import Config, load_config, work_path
from hybridrec.constants import (
    EVENTS_LIVE,
    INTERACTIONS,
    RECOMMENDATIONS_LIVE,
    REJECTS,
    STREAM_PROGRESS,
    TEXT_EMBEDDINGS,
    USER_COL,
)
from hybridrec.ops import progress
from hybridrec.ops.cli_base import argument_parser, protect_secrets, setup_logging
from hybridrec.ops.runner import exit_on_known_errors, name_the_stop, stopping
from hybridrec.ops.session import get_spark
from hybridrec.safety import privacy
from hybridrec.store.locking import RunLock
from hybridrec.store.runs import newest_complete_run
from hybridrec.store.tables import MissingTableError, Warehouse
from hybridrec.streaming import events, live
from jobs.ingest import latest_event_ts

NAME = "stream"
STREAM_LOCK = "_stream_lock.json"
IDENTITY = "hybridrec_stream.json"
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
log = logging.getLogger(__name__)


def snapshot_key(stream_id: str, batch_id: int) -> str:
    """Sorts in commit order: by the stream's start, then the batch."""
    return f"stream-{stream_id}-{batch_id:09d}"


def stream_identity(checkpoint: str) -> str:
    """The stream's start time, kept beside its checkpoint: a restart keeps it (and its batch
    ids), a new checkpoint starts a new stream whose snapshots sort after the old ones."""
    path = Path(checkpoint.removeprefix("file:")) / IDENTITY
    if path.exists():
        return json.loads(path.read_text())["stream_id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    stream_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path.write_text(json.dumps({"stream_id": stream_id}))
    return stream_id


class MicroBatches:
    """``foreachBatch``'s function and the stream's running totals."""

    def __init__(self, spark: SparkSession, cfg: Config, warehouse: Warehouse, stream_id: str):
        self.spark, self.cfg, self.warehouse, self.stream_id = spark, cfg, warehouse, stream_id
        self.key = privacy.read_key(cfg) if cfg.privacy.pseudonymise_user_ids else None
        self.serving: live.Serving | None = None
        self.totals = {"batches": 0, "rows_in": 0, "rejected": 0, "duplicates": 0, "folded": 0}

    def serving_now(self) -> live.Serving:
        """The newest complete run, checked at each micro-batch: a new one is switched to at a
        micro-batch boundary."""
        run_id = newest_complete_run(self.warehouse)
        if run_id is None:
            raise MissingTableError(
                "no complete batch run in the warehouse: the stream folds events into one "
                "(run `hybridrec run` first)"
            )
        if self.serving is None or self.serving.run_id != run_id:
            if self.serving is not None:
                log.info("stream: switching from run %s to run %s", self.serving.run_id, run_id)
            self.serving = live.load_serving(self.spark, self.cfg, run_id, self.warehouse)
        return self.serving

    def __call__(self, arrivals: DataFrame, batch_id: int) -> None:
        with progress.in_stage(f"micro-batch {batch_id}"):
            self.fold(arrivals, batch_id)

    def fold(self, arrivals: DataFrame, batch_id: int) -> None:
        """One micro-batch: validate, drop repeats, fold in, rank, publish (progress last)."""
        started = time.perf_counter()
        if self.cfg.stream.source == "kafka":
            topic = self.cfg.stream.kafka.topic
            arrived = arrivals.agg(F.count(F.lit(1)), F.max("timestamp")).first()
            if not arrived[0]:
                return
            n_files, newest_arrival = 0, arrived[1]
            raw = events.parse_lines(arrivals, f"stream:kafka:{topic}")
        else:
            landed = arrivals.collect()  # path, modificationTime: maxFilesPerTrigger rows at most
            if not landed:
                return
            n_files, newest_arrival = len(landed), max(r.modificationTime for r in landed)
            raw = events.read_landed(self.spark, sorted(r.path for r in landed), self.cfg)
        snapshot = snapshot_key(self.stream_id, batch_id)
        serving = self.serving_now()
        write = lambda df, name: self.warehouse.write(df, name, run_id=snapshot)  # noqa: E731
        raw = raw.cache()
        try:
            rows_in = raw.count()
            checked = events.validate(
                raw, self.cfg, snapshot, latest_event_ts(datetime.now(timezone.utc)), self.key
            )
            rejected = write(checked.rejects, REJECTS)
            valid = checked.valid.cache()
            n_valid = valid.count()
        finally:
            raw.unpersist()
        every_earlier = live.earlier_events(self.warehouse, snapshot)
        seen = serving.warehouse.read(INTERACTIONS).select(*events.EVENT_COLUMNS)
        earlier = None
        if every_earlier is not None:
            seen = seen.unionByName(every_earlier.select(*events.EVENT_COLUMNS))
            earlier = every_earlier.where(F.col("serving_run_id") == F.lit(serving.run_id))
        fresh = events.drop_seen(valid, seen).select(
            *events.EVENT_COLUMNS,
            F.lit(batch_id).cast("long").alias("batch_id"),
            F.lit(serving.run_id).alias("serving_run_id"),
        )
        folded = write(fresh, EVENTS_LIVE) if n_valid else 0
        valid.unpersist()
        users = texts = 0
        newest = None
        if folded:
            batch_events = self.warehouse.read(EVENTS_LIVE, run_id=snapshot)
            touched = batch_events.select(USER_COL).distinct()
            live_rows = batch_events if earlier is None else batch_events.unionByName(earlier)
            history = live.user_history(serving, live_rows, touched).cache()
            docs = live.embedding.review_documents(history, self.cfg, live.SERVED_FOLD)
            cache = live.text_cache(serving, snapshot)
            new_vectors = live.new_text_vectors(serving, docs, cache, self.cfg)
            if new_vectors is None:
                vectors = self.spark.createDataFrame([], live.VECTOR_SCHEMA)
                self.warehouse.drop_runs(TEXT_EMBEDDINGS, [snapshot])  # a replay's, if any
            else:
                texts = write(new_vectors, TEXT_EMBEDDINGS)
                vectors = self.warehouse.read(TEXT_EMBEDDINGS, run_id=snapshot).drop("run_id")
            lists = live.live_lists(serving, history, vectors, cache, self.cfg).select(
                "*",
                F.lit(batch_id).cast("long").alias("batch_id"),
                F.lit(serving.run_id).alias("serving_run_id"),
            )
            write(lists, RECOMMENDATIONS_LIVE)
            history.unpersist()
            published = self.warehouse.read(RECOMMENDATIONS_LIVE, run_id=snapshot)
            users = published.select(USER_COL).distinct().count()
            newest = batch_events.agg(F.max("event_ts")).first()[0]
        committed = datetime.now(timezone.utc)
        if newest_arrival.tzinfo is None:  # Spark hands local-time datetimes to Python
            newest_arrival = newest_arrival.astimezone(timezone.utc)
        progress = {
            "batch_id": int(batch_id),
            "serving_run_id": serving.run_id,
            "files": n_files,
            "rows_in": rows_in,
            "rejected": rejected,
            "duplicates": n_valid - folded,
            "folded": folded,
            "users_updated": users,
            "texts_encoded": texts,
            "newest_event_ts": newest,
            "lag_seconds": (committed - newest_arrival).total_seconds(),
            "seconds": time.perf_counter() - started,
            "committed_at": committed,
        }
        write(
            self.spark.createDataFrame(
                [progress],
                "batch_id long, serving_run_id string, files int, rows_in long, rejected long, "
                "duplicates long, folded long, users_updated long, texts_encoded long, "
                "newest_event_ts timestamp, lag_seconds double, seconds double, "
                "committed_at timestamp",
            ),
            STREAM_PROGRESS,
        )
        for name in self.totals:
            self.totals[name] += 1 if name == "batches" else progress[name]
        log.info(
            "stream batch %d: %d files, %d rows in: %d folded, %d duplicates, %d rejected; "
            "%d users updated, %d texts encoded, against run %s, in %.1fs (lag %.1fs)",
            batch_id,
            n_files,
            rows_in,
            folded,
            progress["duplicates"],
            rejected,
            users,
            texts,
            serving.run_id,
            progress["seconds"],
            progress["lag_seconds"],
        )


def arrivals(spark: SparkSession, cfg: Config, landing: str) -> DataFrame:
    """The streaming source: landed files (path, modificationTime), or a Kafka topic's messages
    (value: one CSV record in the landed files' column order, timestamp)."""
    if cfg.stream.source == "kafka":
        kafka = cfg.stream.kafka
        reader = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
            .option("subscribe", kafka.topic)
            .option("maxOffsetsPerTrigger", kafka.max_offsets_per_trigger)
        )
        for key, value in kafka.options.items():
            reader = reader.option(key, str(value))
        return reader.load().select(F.col("value").cast("string").alias("value"), "timestamp")
    return (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILE_SCHEMA)  # a file source needs one: Spark's own for binaryFile
        .option("pathGlobFilter", cfg.stream.file_glob)
        .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
        .load(landing)
        .select("path", "modificationTime")
    )


def run(spark: SparkSession, cfg: Config, *, available_now: bool = False) -> dict[str, int]:
    """Run the stream until stopped (or, ``available_now``, until what has landed is done)."""
    warehouse = Warehouse.from_config(spark, cfg, catalog_writes=bool(cfg.run.metastore))
    landing = work_path(cfg, "landing_dir", "landing", "stream")
    checkpoint = work_path(cfg, "checkpoint_dir", "stream_checkpoint", "stream")
    if "://" not in landing:
        Path(landing).mkdir(parents=True, exist_ok=True)
    stream_id = stream_identity(checkpoint)
    name_the_stop(f"stream {stream_id}", step_word="", idle="between micro-batches")
    lock = RunLock(
        warehouse.db_root,
        f"stream-{stream_id}",
        stale_seconds=cfg.run.lock_stale_seconds,
        spark=spark,
        name=STREAM_LOCK,
    )
    with lock:
        batches = MicroBatches(spark, cfg, warehouse, stream_id)
        batches.serving_now()  # no serving run: say so before the query starts
        writer = (
            arrivals(spark, cfg, landing)
            .writeStream.foreachBatch(batches)
            .option("checkpointLocation", f"{checkpoint}/query")
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{cfg.stream.trigger_seconds} seconds")
        log.info(
            "stream %s: reading %s (%s) into %s%s",
            stream_id,
            f"topic {cfg.stream.kafka.topic}" if cfg.stream.source == "kafka" else landing,
            "csv records" if cfg.stream.source == "kafka" else cfg.stream.format,
            warehouse.db_root,
            ", what has landed, then stop" if available_now else "",
        )
        query = writer.start()
        try:
            query.awaitTermination()
        except BaseException:
            if stopping():
                # The micro-batch runs in py4j's callback thread and fails as the process
                # ends: Spark's log of that failure (a page of stack) is no news after the
                # stop line. The checkpoint replays the micro-batch at the next start.
                with contextlib.suppress(Exception):
                    spark.sparkContext.setLogLevel("OFF")
            raise
    log.info("stream %s stopped: %s", stream_id, batches.totals)
    return batches.totals


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argument_parser("hybridrec stream")
    parser.add_argument(
        "--available-now",
        action="store_true",
        help="process what has landed, then stop (tests, catch-up, Airflow)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    with exit_on_known_errors():
        cfg = load_config(args.conf, args.set)
        protect_secrets(cfg)
        spark = get_spark(cfg)
        return run(spark, cfg, available_now=args.available_now)


if __name__ == "__main__":
    main(sys.argv[1:])
