"""Encoder throughput: the embed job's Spark path against sentence-transformers in one process.

    python benchmarks/embed_throughput.py /data/amazon_all_beauty_5_2018 [--limit 3000] \
        [--backends torch torch-bf16 onnx onnx-fp32] [--repeats 2] [--set embed.batch_size=32 ...]

Texts: the first ``--limit`` distinct review texts of an Amazon folder (``*_5.json(.gz)``,
``reviewText``) or the distinct tags of a MovieLens folder (``tags.csv``). On the same texts it
times

- ``in-process``: ``SentenceTransformer(<bundled model>).encode(texts, batch_size=...)`` with
  torch using every core (torch), ``udfs.encoder.TextEncoder`` in bfloat16 with every core as torch
  threads (torch-bf16), and ``udfs.onnx_encoder.OnnxTextEncoder`` with every core as ONNX Runtime
  threads (onnx: int8, onnx-fp32: float with the BERT fusions);
- ``spark``: the embed job's own path (``hybridrec.models.embedding.encode_task_count`` and
  ``encode_in_tasks`` with ``udfs.embedding_udf.encode_texts_udf``) on the project config's
  local session, its output consumed by the ``noop`` writer (so that Spark runs the UDF).

Warm-up is excluded from every timing alike: before each timed pass the in-process encoder
encodes two batches, and Spark runs the same path on two batches per task slot, which loads the
encoder in every reused Python worker. Model loads are counted from ``get_encoder``'s cache misses
in each worker (a probe task per slot). The ONNX export and quantisation happen once, before any
timing, and are reported on their own. Each path runs ``--repeats`` times, interleaved with the
others so that other load on the machine falls on all of them; the best pass is reported.
Also printed: the mean (and lowest) cosine of each other backend's vectors to the torch vectors,
and beside every row the CPU model and its vector instruction sets (AVX2, AVX-512, VNNI, AMX,
BF16): int8's and bf16's speed depend on them, so a figure holds for the CPU it names. A backend
would replace torch as the CPU default only at >= 1.3x torch's speed through Spark, and only once
it also keeps NDCG@10 within 1% on each data set of benchmarks/quality.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hybridrec.config.loader import Config, load_config
from hybridrec.models import embedding
from hybridrec.ops.session import get_spark
from udfs.cpu import this_cpu
from udfs.embedding_udf import encode_texts_udf
from udfs.encoder import ONNX_PRECISION, TextEncoder, bundled_model_path, resolve_model

TARGET_RATIO = 0.9  # Spark torch / in-process torch
SPEED_GATE, COSINE_GATE = 1.3, 0.99  # an ONNX backend as the CPU default: speed-up, mean cosine
BACKENDS = ["torch", "torch-bf16", *ONNX_PRECISION]


def read_texts(folder: Path, limit: int) -> list[str]:
    """Distinct non-blank texts, in file order, at most ``limit``."""
    if (folder / "tags.csv").is_file():
        column = pd.read_csv(folder / "tags.csv", usecols=["tag"])["tag"].dropna().astype(str)
        candidates = iter(column.tolist())
    else:
        files = sorted(p for p in folder.glob("*_5.json*") if not p.name.startswith("meta_"))
        if not files:
            raise SystemExit(
                f"{folder}: no Amazon *_5.json(.gz) review file and no MovieLens tags.csv"
            )

        def reviews():
            with (gzip.open if files[0].suffix == ".gz" else open)(files[0], "rt") as lines:
                for line in lines:
                    yield json.loads(line).get("reviewText") or ""

        candidates = reviews()
    texts: dict[str, None] = {}
    for text in candidates:
        if text.strip():
            texts.setdefault(text)
            if len(texts) >= limit:
                break
    return list(texts)


class InProcess:
    """One encoder in this process, every core its threads."""

    def __init__(self, backend: str, cfg: Config, cores: int):
        self.backend, self.cfg, self.cores = backend, cfg, cores
        path = cfg.embed.model_path or bundled_model_path()
        if backend == "torch":
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(cores)
            self.model = SentenceTransformer(path, device="cpu")
            self.model.max_seq_length = cfg.embed.max_length
        elif backend == "torch-bf16":
            import torch

            torch.set_num_threads(cores)
            self.model = TextEncoder(
                path,
                "cpu",
                max_length=cfg.embed.max_length,
                batch_size=cfg.embed.batch_size,
                bf16=True,
            )
        else:
            from udfs.onnx_encoder import OnnxTextEncoder

            self.model = OnnxTextEncoder(
                path,
                max_length=cfg.embed.max_length,
                batch_size=cfg.embed.batch_size,
                threads=cores,
                cache_dir=cfg.embed.onnx_cache_dir,
                precision=ONNX_PRECISION[backend],
            )

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.backend != "torch":
            return self.model.encode(texts)
        return self.model.encode(
            texts,
            batch_size=self.cfg.embed.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def timed(self, texts: list[str]) -> tuple[float, np.ndarray]:
        self.encode(texts[: 2 * self.cfg.embed.batch_size])  # warm-up
        started = time.perf_counter()
        vectors = self.encode(texts)
        return time.perf_counter() - started, vectors


class SparkPath:
    """The embed job's encode step, on texts in a DataFrame."""

    def __init__(self, spark, cfg: Config, texts: list[str]):
        self.spark, self.cfg = spark, cfg
        self.slots = spark.sparkContext.defaultParallelism
        frame = spark.createDataFrame(pd.DataFrame({"text": texts}))
        self.texts = frame.withColumn("text_hash", embedding.text_hash(frame["text"])).cache()
        self.n = self.texts.count()
        self.partitions = embedding.encode_task_count(
            self.n, cfg.embed.texts_per_task, self.slots, cfg.embed.partitions
        )

    def run(self, backend: str, texts, partitions: int) -> None:
        embed = self.cfg.embed
        _, model_id = resolve_model(embed.model_path, embed.model_id, embed.max_length, backend)
        encode = encode_texts_udf(
            model_path=embed.model_path,
            device=embed.device,
            max_length=embed.max_length,
            batch_size=embed.batch_size,
            backend=backend,
            onnx_cache_dir=embed.onnx_cache_dir,
        )
        encoded = embedding.encode_in_tasks(texts, encode, partitions, model_id)
        encoded.write.format("noop").mode("overwrite").save()

    def loads(self) -> dict[int, int]:
        """Encoder loads so far in each live Python worker (pid -> get_encoder cache misses)."""

        def probe(batches):
            from udfs.encoder import get_encoder

            for _ in batches:
                time.sleep(0.5)  # keep this worker busy, so that each probe task takes its own
            yield pd.DataFrame({"pid": [os.getpid()], "loads": [get_encoder.cache_info().misses]})

        # A pandas function, as the encoder is: RDD tasks get Python workers of their own.
        tasks = self.spark.range(self.slots).repartition(self.slots)
        rows = tasks.mapInPandas(probe, "pid long, loads long").collect()
        return {row.pid: row.loads for row in rows}

    def timed(self, backend: str) -> tuple[float, int, int]:
        """Seconds of the whole encode, loads during warm-up and during the timed run."""
        before = self.loads()
        warm = self.texts.limit(2 * self.cfg.embed.batch_size * self.slots)
        self.run(backend, warm, self.slots)
        warmed = self.loads()
        started = time.perf_counter()
        self.run(backend, self.texts, self.partitions)
        seconds = time.perf_counter() - started
        after = self.loads()
        warm_loads = sum(warmed.values()) - sum(before.get(pid, 0) for pid in warmed)
        timed_loads = sum(after.values()) - sum(warmed.get(pid, 0) for pid in after)
        return seconds, warm_loads, timed_loads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="Amazon *_5.json(.gz) or MovieLens folder")
    parser.add_argument("--limit", type=int, default=3000, help="distinct texts to encode")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per path (best kept)")
    parser.add_argument("--work", type=Path, default=None, help="Spark work dir (default: temp)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    texts = read_texts(args.folder, args.limit)
    load_before = os.getloadavg()[0]  # other processes' load skews every path
    work = args.work or Path(tempfile.mkdtemp(prefix="hybridrec-embed-bench-"))
    cfg = load_config([], [f"run.work_dir={work}", *args.overrides])
    cores = os.cpu_count() or 1
    spark = get_spark(cfg)
    sparked = SparkPath(spark, cfg, texts)
    task_cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))

    exported = []
    for backend in [b for b in args.backends if b in ONNX_PRECISION]:
        from udfs.onnx_encoder import exported_model

        started = time.perf_counter()
        model_file = exported_model(
            cfg.embed.model_path or bundled_model_path(),
            cfg.embed.max_length,
            cfg.embed.onnx_cache_dir,
            ONNX_PRECISION[backend],
        )
        exported.append(
            f"{backend} export: {time.perf_counter() - started:.1f} s "
            f"(once per host, cached as {model_file.name}; not in any timing)"
        )
    local = {backend: InProcess(backend, cfg, cores) for backend in args.backends}

    best: dict[tuple[str, str], float] = {}
    loads: dict[tuple[str, str], tuple[int, int]] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for backend in args.backends:
            seconds, vectors[backend] = local[backend].timed(texts)
            key = (backend, "in-process")
            best[key] = min(best.get(key, float("inf")), seconds)
            loads[key] = (1, 0)
            seconds, warm_loads, timed_loads = sparked.timed(backend)
            key = (backend, "spark")
            best[key] = min(best.get(key, float("inf")), seconds)
            previous = loads.get(key, (0, 0))
            loads[key] = (previous[0] + warm_loads, previous[1] + timed_loads)

    cpu = this_cpu()
    rows = []
    for (backend, path), seconds in best.items():
        spark_row = path == "spark"
        rows.append(
            {
                "backend": backend,
                "path": path,
                "texts": len(texts),
                "seconds": seconds,
                "texts/s": len(texts) / seconds,
                "loads warm-up/timed": "{}/{}".format(*loads[(backend, path)]),
                "batch": cfg.embed.batch_size,
                "max_length": cfg.embed.max_length,
                "threads": f"{task_cpus} x {sparked.slots} tasks" if spark_row else str(cores),
                "tasks": f"{sparked.partitions} ({-(-len(texts) // sparked.partitions)} texts)"
                if spark_row
                else "-",
                "cpu": cpu.model,
                "vector sets": " ".join(cpu.vector_sets()) if cpu.flags is not None else "unknown",
            }
        )
    table = pd.DataFrame(rows)
    print(
        f"\n{len(texts)} distinct texts from {args.folder.name}, {cores} cores, master "
        f"{spark.sparkContext.master}, spark.arrow_batch_rows {cfg.spark.arrow_batch_rows}; "
        f"best of {args.repeats} interleaved passes; warm-up (model load, first batches) "
        "excluded from every path alike; load average before/after "
        f"{load_before:.1f}/{os.getloadavg()[0]:.1f}\n"
    )
    print(table.round({"seconds": 1, "texts/s": 1}).to_string(index=False))
    rate = {key: len(texts) / seconds for key, seconds in best.items()}
    print()
    print(f"CPU: {cpu.describe()}")
    for line in exported:
        print(line)
    if "torch" in args.backends:
        ratio = rate[("torch", "spark")] / rate[("torch", "in-process")]
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(f"b/a (spark torch / in-process torch): {ratio:.2f} ({verdict} >= {TARGET_RATIO})")
    for backend in [b for b in args.backends if b != "torch" and "torch" in args.backends]:
        for path in ("in-process", "spark"):
            speedup = rate[(backend, path)] / rate[("torch", path)]
            verdict = "passes" if speedup >= SPEED_GATE else "fails"
            print(
                f"{backend} / torch speed, {path}: {speedup:.2f}x ({verdict} the >= {SPEED_GATE}x "
                f"gate) on {cpu.describe()}"
            )
        cosine = np.sum(vectors[backend] * vectors["torch"], axis=1)
        verdict = "passes" if cosine.mean() >= COSINE_GATE else "fails"
        print(
            f"cosine {backend} vs torch vectors: mean {cosine.mean():.4f}, lowest "
            f"{cosine.min():.4f} ({verdict} the mean >= {COSINE_GATE} gate)"
        )
    spark.stop()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
