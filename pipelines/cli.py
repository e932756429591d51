"""``hybridrec`` console script.

hybridrec run [--conf conf/local.yaml] [--set key=value ...] [--stages ingest,embed]
hybridrec job <ingest|embed|als|score|evaluate> [--conf ...] [--set ...] --run-id R
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hybridrec.config import ConfigError, load_config
from hybridrec.runner import argument_parser, job_main, new_run_id, setup_logging
from hybridrec.session import get_spark
from pipelines.end_to_end import STAGES, run_pipeline

DEFAULT_CONF = "conf/local.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            parser = argument_parser("run the whole hybridrec pipeline")
            parser.add_argument("--stages", default=None, help="comma-separated subset, in order")
            args = parser.parse_args(rest)
            setup_logging()
            cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
            spark = get_spark(cfg)
            stages = args.stages.split(",") if args.stages else None
            run_pipeline(spark, cfg, args.run_id or new_run_id(), stages)
            return 0
        if command == "job" and rest and rest[0] in STAGES:
            job_main(rest[0], STAGES[rest[0]], rest[1:])
            return 0
    except ConfigError as exc:
        print(f"hybridrec: config error: {exc}", file=sys.stderr)
        return 2
    print(f"hybridrec: unknown command {' '.join(argv[:2])!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
