"""Scale benchmark: the pipeline on generated data at growing sizes, seconds and memory per stage.

    python benchmarks/scale.py [--sizes 3000:1000,30000:3000,300000:10000] [--real-encoder] \
        [--work /tmp/hybridrec-scale] [--set key=value ...] [--reuse]

Each size is ``users:items``; a user has ~9 behaviour events, 40% of them with a review. The data
is generated block by block (``scale_data``) into Parquet under ``--work``, outside the timings,
and read with ``source.kind: generic``. Each size then runs in a fresh Python process with its own
SparkSession, warehouse and MLflow store: the JVM of a stopped session stays up in the process
that started it, so only a new process gives each size its own memory peak and a cold start.
Stages run one by one under one run id and are timed each. ``--reuse`` reads back a size
already measured under ``--work`` with the same settings instead of running it again.

By default the encoder is a tiny random BERT (1 layer, hidden 32) with the bundled model's
tokenizer, so the embed stage measures Spark's side (dedupe, cache lookup, Arrow, the UDF), not
BERT's arithmetic; ``--real-encoder`` uses the bundled MiniLM.

Memory: a thread samples /proc every 0.5 s. ``driver`` is the Python driver plus its JVM; in local
mode the executors run inside that JVM. ``workers`` is the summed RSS of the Python workers
(pyspark.daemon and its forks; a page shared after fork counts in every process that maps it, so
this is an upper bound), with the most worker processes seen at once.

Prints per size: users, items, interactions, seconds per stage, peak driver and worker MB;
score's and evaluate's seconds next to the ranking kernel's own (its tasks' seconds in the numpy
kernel, summed, over the task slots) and their ratio, the share of Spark's plumbing; then
each stage's growth exponent between consecutive sizes (log(t2/t1) / log(rows2/rows1), rows =
interactions), flagging any above 1.1 between the two largest; then the slowest Spark stages of
the largest size, from Spark's event log.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale_data, when imported by a test

import scale_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "embed", "topics", "als", "score", "evaluate"]
DEFAULT_SIZES = "3000:1000,30000:3000,300000:10000"
# Grids cut down so that the big sizes finish: 70 weight points x 2 sharpness values instead of
# 1,001 x 2, and one ALS point instead of four (still tuned on validation, then refitted).
BENCH_SETS = [
    "score.weight_grid_step=0.25",
    "als.grid.rank=[32]",
    "als.grid.reg_param=[0.3]",
    "als.grid.alpha=[1.0]",
]
FLAG_EXPONENT = 1.1
SAMPLE_SECONDS = 0.5
TINY_BERT = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
log = logging.getLogger("scale")


# --- sizes and growth --------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"3000:1000,30000:3000"`` -> [(3000, 1000), (30000, 3000)]."""
    sizes = []
    for part in text.split(","):
        users, _, items = part.partition(":")
        if not items:
            raise argparse.ArgumentTypeError(f"size {part!r} is not users:items")
        sizes.append((int(users), int(items)))
    return sizes


def growth_exponent(t1: float, t2: float, rows1: float, rows2: float) -> float:
    """How time grows with rows between two sizes: 1 is linear, 2 quadratic; NaN when either
    time is not positive or the row counts are equal (no growth to measure against)."""
    if t1 <= 0 or t2 <= 0 or rows1 <= 0 or rows2 <= 0 or rows1 == rows2:
        return math.nan
    return math.log(t2 / t1) / math.log(rows2 / rows1)


def exponents(table: pd.DataFrame) -> pd.DataFrame:
    """Each stage's (and the total's) exponent between consecutive rows of ``table``."""
    rows = []
    for (_, a), (_, b) in zip(table.iterrows(), table.iloc[1:].iterrows(), strict=False):
        row = {"from": a["size"], "to": b["size"]}
        for name in [*STAGES, "total"]:
            row[name] = growth_exponent(a[name], b[name], a["interactions"], b["interactions"])
        rows.append(row)
    return pd.DataFrame(rows)


def flagged(growth: pd.DataFrame) -> list[str]:
    """Stages whose exponent between the two largest sizes is above ``FLAG_EXPONENT``."""
    if growth.empty:
        return []
    last = growth.iloc[-1]
    return [name for name in STAGES if last[name] > FLAG_EXPONENT]


# --- memory ------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command name, first two command-line words) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended between listdir and open
            continue
        # The command name is in parentheses and may hold spaces: the fields after it are fixed.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(entry)] = (ppid, comm, cmdline)
    return found


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _descendants(procs: dict[int, tuple[int, str, str]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory_now(root: int) -> tuple[float, float, int]:
    """(driver MB, workers MB, worker processes) under ``root``: the Python driver and its JVMs;
    the Python processes under a JVM (pyspark.daemon and the workers it forks)."""
    procs = _processes()
    driver, workers, n_workers = _rss_mb(root), 0.0, 0
    for pid in _descendants(procs, root):
        if procs[pid][1] == "java":
            driver += _rss_mb(pid)
            python = [p for p in _descendants(procs, pid) if "python" in procs[p][2]]
            workers += sum(_rss_mb(p) for p in python)
            n_workers += len(python)
    return driver, workers, n_workers


class MemorySampler(threading.Thread):
    """Peaks of ``memory_now`` since the last ``take``, sampled every ``SAMPLE_SECONDS``."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peaks = (0.0, 0.0, 0)
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        now = memory_now(self.root)
        with self._lock:
            self.peaks = tuple(max(a, b) for a, b in zip(self.peaks, now, strict=True))

    def take(self) -> tuple[float, float, int]:
        """The peaks so far (with one fresh sample, so a short stage is seen), then reset."""
        self.sample()
        with self._lock:
            peaks, self.peaks = self.peaks, (0.0, 0.0, 0)
        return peaks

    def stop(self) -> None:
        self._stop_event.set()


# --- one size, in its own process ----------------------------------------------------------------


def tiny_encoder(folder: Path) -> Path:
    """A seeded random 1-layer BERT saved with the bundled model's tokenizer (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from udfs.encoder import bundled_model_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path(), local_files_only=True)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def size_label(users: int, items: int) -> str:
    return f"u{users}-i{items}"


def data_folder(work: Path, spec: scale_data.Spec) -> Path:
    """Generated once per spec and reused: the generator is deterministic."""
    folder = work / "data" / f"{size_label(spec.n_users, spec.n_items)}-s{spec.seed}"
    marker = folder / "counts.json"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        counts = scale_data.write_parquet(spec, folder)
        marker.write_text(json.dumps(counts))
        log.info("generated %s in %.1fs: %s", folder, time.perf_counter() - started, counts)
    return folder


def pipeline_overrides(data: Path, run_dir: Path, encoder: Path | None) -> list[str]:
    """What points the pipeline at the generated data, its own work folder and the encoder."""
    sets = [
        f"run.work_dir={run_dir}",
        "source.kind=generic",
        "source.generic.format=parquet",
        *(
            f"source.generic.{name}.path={data / name}"
            for name in ("behaviour", "reviews", "items")
        ),
        # Spark's own record of every job and stage: where the time went, without the UI.
        "spark.conf.spark.eventLog.enabled=true",
        "spark.conf.spark.eventLog.compress=false",  # read back below as JSON lines
        f"spark.conf.spark.eventLog.dir=file://{run_dir / 'events'}",
    ]
    if encoder is not None:
        sets.append(f"embed.model_path={encoder}")
    return sets


def measure(spec_file: Path) -> int:
    """Child process: run the stages of one size and write what was measured next to the spec."""
    from hybridrec.config.loader import load_config
    from hybridrec.ops.runner import new_run_id, setup_logging
    from hybridrec.ops.session import get_spark
    from pipelines.end_to_end import run_pipeline

    setup_logging()
    job = json.loads(spec_file.read_text())
    run_dir = Path(job["run_dir"])
    (run_dir / "events").mkdir(parents=True, exist_ok=True)
    cfg = load_config([REPO / "conf/local.yaml"], job["overrides"])
    sampler = MemorySampler(os.getpid())
    sampler.start()
    started = time.perf_counter()
    spark = get_spark(cfg)
    out = {
        "session_seconds": time.perf_counter() - started,
        "task_slots": spark.sparkContext.defaultParallelism,
        "stages": {},
    }
    out["session_driver_mb"], out["session_workers_mb"], _ = sampler.take()
    run_id = new_run_id()
    for stage in STAGES:
        began, wall = time.time(), time.perf_counter()
        results = run_pipeline(spark, cfg, run_id, [stage])[stage]
        driver, workers, n_workers = sampler.take()
        out["stages"][stage] = {
            "seconds": results["seconds"],
            "wall_seconds": time.perf_counter() - wall,
            "began": began,
            "ended": time.time(),
            "driver_mb": driver,
            "workers_mb": workers,
            "worker_processes": n_workers,
            "results": results,
        }
    sampler.stop()
    spark.stop()  # flushes the event log
    Path(job["result"]).write_text(json.dumps(out, indent=1))
    return 0


def run_size(
    work: Path, spec: scale_data.Spec, encoder: Path | None, sets: list[str], reuse: bool
) -> dict:
    """Generate (or reuse) the data, then measure it in a child process, its log kept beside.
    With ``reuse``, a size already measured under ``work`` is read back instead (a long run
    that stopped part way need not start again)."""
    data = data_folder(work, spec)
    run_dir = work / "runs" / size_label(spec.n_users, spec.n_items)
    overrides = [*pipeline_overrides(data, run_dir, encoder), *sets]
    if reuse and _measured_with(run_dir, overrides):
        log.info("size %s: reusing %s", spec, run_dir / "result.json")
        return _measured(run_dir, data)
    shutil.rmtree(run_dir, ignore_errors=True)  # a cold start: no embedding cache, no tables
    run_dir.mkdir(parents=True)
    spec_file = run_dir / "spec.json"
    result = run_dir / "result.json"
    spec_file.write_text(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "overrides": overrides,
                "result": str(result),
                "code": code_state(),
            }
        )
    )
    log.info("size %s: measuring in a child process, log %s", spec, run_dir / "run.log")
    command = [sys.executable, __file__, "--measure", str(spec_file)]
    with open(run_dir / "run.log", "w", buffering=1) as log_file:  # line by line, to tail it
        child = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in child.stdout:  # echoed live and kept, for the event-log-free reading too
            sys.stderr.write(line)
            log_file.write(line)
        if child.wait() != 0:
            raise SystemExit(f"size {spec}: the child process failed, see {run_dir / 'run.log'}")
    return _measured(run_dir, data)


def _measured_with(run_dir: Path, overrides: list[str]) -> bool:
    """Whether ``run_dir`` holds a finished measurement made with these very settings."""
    if not (run_dir / "result.json").is_file():
        return False
    return json.loads((run_dir / "spec.json").read_text())["overrides"] == overrides


def _measured(run_dir: Path, data: Path) -> dict:
    measured = json.loads((run_dir / "result.json").read_text())
    measured["data"] = json.loads((data / "counts.json").read_text())
    measured["events"] = str(run_dir / "events")
    measured["code"] = json.loads((run_dir / "spec.json").read_text()).get("code", "not recorded")
    return measured


# --- reading Spark's event log -----------------------------------------------------------------


PYTHON_NODES = re.compile(
    r"\b(ArrowEvalPython|BatchEvalPython|MapInPandas|MapInArrow|FlatMapGroupsInPandas|"
    r"FlatMapCoGroupsInPandas|AggregateInPandas|WindowInPandas)\b"
)
WRITTEN_TABLE = re.compile(r"InsertIntoHadoopFsRelationCommand\n.*?\.db/(?:_staging/)?(\w+)/", re.S)


def _read_events(events: Path) -> tuple[list[dict], dict[int, str], dict[int, str]]:
    """Completed stages, stage id -> SQL execution id, execution id -> what it does."""
    stages, execution_of, doing = [], {}, {}
    # Spark 4 writes a folder per application (events_1_..., events_2_... when it rolls).
    for path in sorted(events.rglob("events_*")):
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                kind = event["Event"]
                if kind == "SparkListenerStageCompleted":
                    stages.append(event["Stage Info"])
                elif kind == "SparkListenerJobStart":
                    execution = event["Properties"].get("spark.sql.execution.id")
                    for stage in event["Stage IDs"]:
                        execution_of[stage] = execution
                elif kind.endswith("SQLExecutionStart"):
                    doing[str(event["executionId"])] = _what(event)
    return stages, execution_of, doing


def _what(execution: dict) -> str:
    """A SQL execution in words: the table it writes and the Python nodes it runs, since its
    call site is often only ``parquet at <unknown>:0``."""
    plan = execution.get("physicalPlanDescription", "")
    written = WRITTEN_TABLE.search(plan)
    python = sorted(set(PYTHON_NODES.findall(plan)))
    words = [f"write {written.group(1)}" if written else execution.get("description", "")]
    return " ".join(words + [f"[{', '.join(python)}]"] if python else words)


def slowest_spark_stages(events: Path, stage_times: dict, top: int = 10) -> pd.DataFrame:
    """The ``top`` longest Spark stages in the event log: the pipeline stage they ran in, their
    call site (a Python line where Spark knows it) and what their SQL execution does."""
    stages, execution_of, doing = _read_events(events)
    rows = []
    for info in stages:
        if "Completion Time" not in info or "Submission Time" not in info:
            continue
        start = info["Submission Time"] / 1000
        rows.append(
            {
                "pipeline stage": _stage_at(start, stage_times),
                "spark stage": info["Stage ID"],
                "seconds": info["Completion Time"] / 1000 - start,
                "tasks": info["Number of Tasks"],
                "call site": info["Stage Name"].replace(
                    "$anonfun$withThreadLocalCaptured$1", "async"
                ),
                "execution": doing.get(execution_of.get(info["Stage ID"]), ""),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("seconds", ascending=False).head(top)


def _stage_at(when: float, stage_times: dict) -> str:
    for name, s in stage_times.items():
        if s["began"] <= when <= s["ended"]:
            return name
    return "-"


# --- the report -------------------------------------------------------------------------------


def size_row(users: int, items: int, measured: dict) -> dict:
    stages = measured["stages"]
    row = {
        "size": size_label(users, items),
        "users": users,
        "items": items,
        "interactions": stages["ingest"]["results"]["interactions"],
        "reviews": measured["data"]["reviews"],
    }
    row.update({name: stages[name]["seconds"] for name in STAGES})
    row["total"] = sum(stages[name]["seconds"] for name in STAGES)
    row["bookkeeping"] = sum(stages[n]["wall_seconds"] for n in STAGES) - row["total"]
    row["session"] = measured["session_seconds"]
    row["driver MB"] = max(
        [measured["session_driver_mb"], *(stages[n]["driver_mb"] for n in STAGES)]
    )
    row["workers MB"] = max(
        [measured["session_workers_mb"], *(stages[n]["workers_mb"] for n in STAGES)]
    )
    return row


def stage_memory(label: str, measured: dict) -> dict:
    stages = measured["stages"]
    row = {"size": label}
    for name in STAGES:
        s = stages[name]
        row[name] = f"{s['driver_mb']:.0f} / {s['workers_mb']:.0f} ({s['worker_processes']})"
    return row


RANKING_STAGES = ("score", "evaluate")


def overhead_row(label: str, measured: dict) -> dict:
    """Score's and evaluate's seconds next to the kernel's own: the seconds their tasks spent
    in the numpy kernels and (score) in the learned ranker's boosting rounds, summed, over the
    task slots, plus the driver's numpy arithmetic between them (EASE's inverses; on every core
    already): what the stage would take if it were nothing but its arithmetic on the same
    cores; the ratio, and the ratio over the tasks' arithmetic alone; the learned ranker's
    seconds within score, and its boosting rounds' share of them (summed over its fits)."""
    slots = measured.get("task_slots", os.cpu_count())
    row = {"size": label, "slots": slots}
    for name in RANKING_STAGES:
        stage = measured["stages"][name]
        summed = stage["results"].get("kernel_seconds", math.nan)
        summed += stage["results"].get("ranker_boosting_seconds", 0.0)
        tasks = summed / slots
        kernel = tasks + stage["results"].get("driver_kernel_seconds", 0.0)
        row[f"{name} s"] = stage["seconds"]
        row[f"{name} kernel s"] = kernel
        row[f"{name} ratio"] = stage["seconds"] / kernel if kernel > 0 else math.nan
        row[f"{name} tasks-only ratio"] = stage["seconds"] / tasks if tasks > 0 else math.nan
    # The learned ranker's part of score: training rows, fits and the gate on validation.
    score = measured["stages"]["score"]["results"]
    row["score ranker s"] = score.get("ranker_seconds", math.nan)
    row["score ranker boosting s"] = score.get("ranker_boosting_seconds", math.nan)
    return row


def code_state() -> str:
    """The commit measured and the tracked files that differed from it when the run started:
    a timing belongs to the code that ran, committed or not."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    changed = git("diff", "--name-only", "HEAD").split()
    return f"{git('rev-parse', '--short', 'HEAD')}" + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    )


def report(
    table: pd.DataFrame,
    memory: pd.DataFrame,
    overhead: pd.DataFrame,
    largest: dict,
    args,
    sets,
) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 90)
    print("\ncode measured (the tree may change while a long run goes on):")
    for size, code in zip(table["size"], args.codes, strict=True):
        print(f"  {size}: {code}")
    print(f"encoder: {args.encoder_label}")
    print("config overrides (besides data paths, work folder and event log):")
    for item in sets:
        print(f"  {item}")
    print("\nseconds per stage (stage time as the runner logs it; bookkeeping: the runs table,")
    print("lock and summary around each stage; session: SparkSession start); peak RSS in MB")
    print("(driver: Python driver + JVM, which holds the local executors; workers: summed")
    print("Python workers)\n")
    print(table.round(1).to_string(index=False))
    print("\npeak MB per stage, driver / workers (most Python worker processes at once)\n")
    print(memory.to_string(index=False))
    print("\nranking overhead: stage seconds / kernel seconds (summed over tasks, / task slots)\n")
    print(overhead.round(2).to_string(index=False))
    growth = exponents(table)
    print("\ngrowth exponent per stage, log(t2/t1) / log(rows2/rows1), rows = interactions\n")
    print(growth.round(2).to_string(index=False))
    hot = flagged(growth)
    if hot:
        print(f"\nABOVE {FLAG_EXPONENT} between the two largest sizes: {', '.join(hot)}")
    elif not growth.empty:
        print(f"\nno stage above {FLAG_EXPONENT} between the two largest sizes")
    slow = slowest_spark_stages(Path(largest["events"]), largest["stages"])
    print(f"\nslowest Spark stages at the largest size ({table.iloc[-1]['size']})\n")
    print(slow.round(1).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-scale"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--real-encoder", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="read back sizes already measured under --work"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's entry
    args = parser.parse_args(argv)
    if args.measure:
        return measure(args.measure)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    if args.real_encoder:
        encoder, args.encoder_label = None, "bundled all-MiniLM-L6-v2 (--real-encoder)"
    else:
        encoder = tiny_encoder(work / "tiny-bert")
        args.encoder_label = f"tiny random BERT {TINY_BERT} at {encoder}"
    log.info("encoder: %s", args.encoder_label)
    sets = [*BENCH_SETS, *args.set]
    rows, memory, overhead, codes, measured = [], [], [], [], {}
    for users, items in args.sizes:
        measured = run_size(work, scale_data.Spec(users, items), encoder, sets, args.reuse)
        rows.append(size_row(users, items, measured))
        memory.append(stage_memory(rows[-1]["size"], measured))
        overhead.append(overhead_row(rows[-1]["size"], measured))
        codes.append(measured["code"])
    args.codes = codes
    report(pd.DataFrame(rows), pd.DataFrame(memory), pd.DataFrame(overhead), measured, args, sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
