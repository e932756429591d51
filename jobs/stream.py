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

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config, load_config, work_path
from hybridrec.constants import (
    EVENTS_LIVE,
    INTERACTIONS,
    RATING_COL,
    RECOMMENDATIONS_LIVE,
    REJECTS,
    STREAM_PROGRESS,
    TEXT_COL,
    TEXT_EMBEDDINGS,
    USER_COL,
    USER_INTERESTS_LIVE,
)
from hybridrec.ops import progress
from hybridrec.ops.cli_base import argument_parser, protect_secrets, setup_logging
from hybridrec.ops.runner import exit_on_known_errors, name_the_stop, stopping
from hybridrec.ops.session import get_spark
from hybridrec.safety import privacy
from hybridrec.store.locking import RunLock
from hybridrec.store.runs import RUNS, newest_complete_run
from hybridrec.store.small_files import SmallFrame
from hybridrec.store.tables import MissingTableError, Warehouse
from hybridrec.streaming import events, live, local
from jobs.ingest import latest_event_ts

NAME = "stream"
STREAM_LOCK = "_stream_lock.json"
IDENTITY = "hybridrec_stream.json"
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
log = logging.getLogger(__name__)
PROGRESS_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType()),
        T.StructField("serving_run_id", T.StringType()),
        T.StructField("files", T.IntegerType()),
        *[
            T.StructField(name, T.LongType())
            for name in ("rows_in", "rejected", "duplicates", "folded")
            + ("users_updated", "texts_encoded")
        ],
        T.StructField("newest_event_ts", T.TimestampType()),
        T.StructField("lag_seconds", T.DoubleType()),
        T.StructField("seconds", T.DoubleType()),
        T.StructField("committed_at", T.TimestampType()),
    ]
)


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
        self._local: tuple[str, local.LocalServing] | None = None
        self._live_events: pd.DataFrame | None = None
        self._runs_stamp: tuple | None = None
        self.totals = {"batches": 0, "rows_in": 0, "rejected": 0, "duplicates": 0, "folded": 0}

    def serving_now(self) -> live.Serving:
        """The newest complete run, checked at each micro-batch: a new one is switched to at a
        micro-batch boundary."""
        stamp = self.warehouse.files_stamp(RUNS)
        if self.serving is not None and stamp == self._runs_stamp:
            return self.serving  # no run has started, moved or ended since the last check
        self._runs_stamp = stamp
        run_id = newest_complete_run(self.warehouse)
        if run_id is None:
            raise MissingTableError(
                "no complete batch run in the warehouse: the stream folds events into one "
                "(run `hybridrec run` first)"
            )
        if self.serving is None or self.serving.run_id != run_id:
            if self.serving is not None:
                log.info("stream: switching from run %s to run %s", self.serving.run_id, run_id)
            self.serving = live.load_serving(
                self.spark, self.cfg, run_id, self.warehouse, topics=True
            )
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
        # A small micro-batch's rows are counted as the validation reads them (every row passes
        # the repeats window's shuffle), not by a job of their own.
        read_rows = Observation()
        raw = raw.observe(read_rows, F.count(F.lit(1)).alias("rows"))
        # To the minute: the same checks (built once, ingest memoises them) for a minute of
        # micro-batches.
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        checked = events.validate(raw, self.cfg, snapshot, latest_event_ts(now), self.key)
        valid, small = checked.valid, None
        limit = self.cfg.stream.local_max_events
        if serving.catalog is not None and limit:
            # One job: the rows themselves when there are few enough to fold in here.
            small = valid.limit(limit + 1).toPandas().astype({RATING_COL: "float64"})
            small = small if len(small) <= limit else None
        if small is None:  # a large micro-batch: its counts are jobs of their own
            valid = valid.cache()
            n_valid, rows_in = valid.count(), raw.count()
        else:
            n_valid, rows_in = len(small), int(read_rows.get["rows"])
        if n_valid == rows_in:  # every row valid: no reject to write (a job saved)
            self.clear(REJECTS, snapshot)
            rejected = 0
        else:
            rejected = write(checked.rejects, REJECTS)
        if small is not None:
            folded, users, texts, newest, outputs = self.fold_locally(
                small, valid.schema, snapshot, batch_id, serving
            )
        else:
            folded, users, texts, newest, outputs = self.fold_in_spark(
                valid, n_valid, snapshot, batch_id, serving
            )
            # Its events are in events_live only: read back when next needed.
            self._live_events = None
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
        # Each write is a small Spark job that mostly waits on files: side by side, they take
        # the time of the slowest; stream_progress, which makes them count, is published last.
        outputs[STREAM_PROGRESS] = SmallFrame(pd.DataFrame([progress]), PROGRESS_SCHEMA)
        self.warehouse.write_together(outputs, run_id=snapshot)
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
            time.perf_counter() - started,
            progress["lag_seconds"],
        )

    def fold_in_spark(
        self, valid: DataFrame, n_valid: int, snapshot: str, batch_id: int, serving: live.Serving
    ) -> tuple[int, int, int, datetime | None, dict]:
        """Fold a micro-batch in as Spark jobs (``hybridrec.streaming.live``): any size."""
        write = lambda df, name: self.warehouse.write(df, name, run_id=snapshot)  # noqa: E731
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
                self.clear(TEXT_EMBEDDINGS, snapshot)
            else:
                texts = write(new_vectors, TEXT_EMBEDDINGS)
                vectors = self.warehouse.read(TEXT_EMBEDDINGS, run_id=snapshot).drop("run_id")
            lists = live.live_lists(serving, history, vectors, cache, self.cfg)
            write(self.stamped(lists, batch_id, serving), RECOMMENDATIONS_LIVE)
            interests = live.live_interests(serving, history, self.cfg)
            if interests is None:
                self.clear(USER_INTERESTS_LIVE, snapshot)
            else:
                write(self.stamped(interests, batch_id, serving), USER_INTERESTS_LIVE)
            history.unpersist()
            published = self.warehouse.read(RECOMMENDATIONS_LIVE, run_id=snapshot)
            users = published.select(USER_COL).distinct().count()
            newest = batch_events.agg(F.max("event_ts")).first()[0]
            newest = newest and newest.astimezone(timezone.utc)  # Spark gives local time
        else:
            self.clear(USER_INTERESTS_LIVE, snapshot)
        return folded, users, texts, newest, {}

    @staticmethod
    def stamped(rows: DataFrame, batch_id: int, serving: live.Serving) -> DataFrame:
        """A live table's rows (lists, interests) with the micro-batch and the serving run."""
        return rows.select(
            "*",
            F.lit(batch_id).cast("long").alias("batch_id"),
            F.lit(serving.run_id).alias("serving_run_id"),
        )

    def fold_locally(
        self,
        batch: pd.DataFrame,
        schema: T.StructType,
        snapshot: str,
        batch_id: int,
        serving: live.Serving,
    ) -> tuple[int, int, int, datetime | None, dict[str, DataFrame]]:
        """Fold a small micro-batch (its valid events, of ``schema``) in the driver
        (``hybridrec.streaming.local``): what it folded, the users and texts, the newest event
        time, and the tables to write (written with ``stream_progress``)."""
        earlier = self.live_events(snapshot)
        state = self.local_state(serving, earlier)
        touched = batch[USER_COL].unique()
        fresh = batch
        if len(touched):
            past, known = local.pull_history(state, touched)
            theirs = earlier[earlier[USER_COL].isin(touched)]
            fresh = local.drop_repeats(batch, pd.concat([past, theirs[past.columns]]))
        fresh = fresh[events.EVENT_COLUMNS].assign(
            batch_id=np.int64(batch_id), serving_run_id=serving.run_id
        )
        if fresh.empty:
            for table in (EVENTS_LIVE, TEXT_EMBEDDINGS, RECOMMENDATIONS_LIVE, USER_INTERESTS_LIVE):
                self.clear(table, snapshot)
            return 0, 0, 0, None, {}
        mine = theirs[theirs["serving_run_id"] == serving.run_id]
        history = pd.concat(
            [past, mine[events.EVENT_COLUMNS], fresh[events.EVENT_COLUMNS]], ignore_index=True
        )
        history = history[history[USER_COL].isin(fresh[USER_COL].unique())]
        fresh_texts = set(local.review_documents(fresh, self.cfg)["text_hash"])
        lists, new_texts = local.live_lists(
            serving, state, history, self.cfg, snapshot, known, fresh_texts
        )
        lists = lists.assign(batch_id=np.int64(batch_id), serving_run_id=serving.run_id)
        outputs = {
            EVENTS_LIVE: SmallFrame(fresh, local.live_events_schema(schema)),
            RECOMMENDATIONS_LIVE: SmallFrame(lists, local.LIST_SCHEMA),
        }
        interests = live.live_interests(serving, self.as_spark(history, schema), self.cfg)
        if interests is None:
            self.clear(USER_INTERESTS_LIVE, snapshot)
        else:
            outputs[USER_INTERESTS_LIVE] = self.stamped(interests, batch_id, serving)
        if new_texts.empty:
            self.clear(TEXT_EMBEDDINGS, snapshot)
        else:
            new_texts.insert(1, "model_id", serving.model_id)
            outputs[TEXT_EMBEDDINGS] = SmallFrame(new_texts, live.VECTOR_SCHEMA)
        folded, texts = len(fresh), len(new_texts)
        self._live_events = pd.concat([earlier, fresh.assign(run_id=snapshot)], ignore_index=True)
        newest = fresh["event_ts"].max().tz_localize("UTC").to_pydatetime()  # session time: UTC
        return folded, int(lists[USER_COL].nunique()), texts, newest, outputs

    def as_spark(self, history: pd.DataFrame, schema: T.StructType) -> DataFrame:
        """A small micro-batch's touched users' history (pandas) as a Spark frame, for the
        one interests implementation (a few small jobs)."""
        fields = T.StructType([schema[c] for c in events.EVENT_COLUMNS])
        frame = self.spark.createDataFrame(history[events.EVENT_COLUMNS], schema=fields)
        # pandas holds a missing rating as NaN: null again, as Spark holds it.
        return frame.withColumn(RATING_COL, F.nanvl(F.col(RATING_COL), F.lit(None)))

    def clear(self, table: str, snapshot: str) -> None:
        """Remove a snapshot this micro-batch does not write, left by an earlier attempt of it:
        a replay is replaced whole."""
        if self.warehouse.exists(table, run_id=snapshot):
            self.warehouse.drop_runs(table, [snapshot])

    def local_state(self, serving: live.Serving, earlier: pd.DataFrame) -> local.LocalServing:
        """The serving run's cached tables for small micro-batches, loaded at first use with
        the vectors of the ``earlier`` live events' texts."""
        if self._local is None or self._local[0] != serving.run_id:
            if self._local is not None:
                self._local[1].release()
            self._local = (serving.run_id, local.load(serving))
            local.preload_vectors(self._local[1], earlier[TEXT_COL])
        return self._local[1]

    def live_events(self, snapshot: str) -> pd.DataFrame:
        """Every event folded in before micro-batch ``snapshot`` (any serving run): read once,
        then kept (the repeats to drop, and users' live history). Held in the driver: about 200
        bytes an event, a day at 20 events/s about 350 MB."""
        if self._live_events is None:
            earlier = live.earlier_events(self.warehouse, snapshot)
            if earlier is None:
                columns = [*events.EVENT_COLUMNS, "serving_run_id", "run_id"]
                self._live_events = pd.DataFrame(columns=columns)
            else:
                self._live_events = (
                    earlier.select(*events.EVENT_COLUMNS, "serving_run_id", "run_id")
                    .toPandas()
                    .astype({RATING_COL: "float64"})
                )
        # Loaded before this micro-batch, appended after each: all of it is earlier.
        return self._live_events


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
        if not available_now and cfg.stream.local_max_events:
            local.driver_encoder(cfg)  # a service loads it as it starts, not at a first review
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
