"""What an analyst waits for: wall seconds of ``hybridrec`` commands, each a fresh process.

    python benchmarks/sql_latency.py --conf conf/local.yaml [--set ...] [--repeats 3]

Run it after a pipeline run on that config. Prints one row per command: ``--help``, an argument
error, a refused write, the README's query answered by DuckDB (``--engine auto``) and by Spark
(``--engine spark``), with the median and the range over the repeats, and checks that both
engines gave the same answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

QUERY = "SELECT count(*) AS n FROM hybridrec.metrics_latest"
WRITE = "INSERT INTO hybridrec.interactions SELECT * FROM hybridrec.interactions"


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True
    )
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = [a for path in args.conf for a in ("--conf", path)]
    settings += [a for item in args.set for a in ("--set", item)]
    commands = {
        "hybridrec --help": ["--help"],
        "hybridrec sql --max-rows 0 (argument error)": ["sql", "--max-rows", "0", QUERY],
        "hybridrec sql <INSERT> (refused)": ["sql", *settings, WRITE],
        "hybridrec sql <count> --engine auto": ["sql", *settings, "--format", "csv", QUERY],
        "hybridrec sql <count> --engine spark": [
            "sql",
            *settings,
            "--format",
            "csv",
            "--engine",
            "spark",
            QUERY,
        ],
    }
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<45} {'exit':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    answers = {}
    for name, command in commands.items():
        runs = [timed(command) for _ in range(args.repeats)]
        seconds = [s for s, _ in runs]
        done = runs[-1][1]
        answers[name] = done.stdout
        print(
            f"{name:<45} {done.returncode:>4} {statistics.median(seconds):>9.2f} "
            f"{min(seconds):>7.2f} {max(seconds):>7.2f}"
        )
    auto, spark = (answers[f"hybridrec sql <count> --engine {e}"] for e in ("auto", "spark"))
    print(f"same answer from both engines: {auto == spark} ({auto.split()[-1:]})")


if __name__ == "__main__":
    main()
