"""The whole pipeline in one process and one Spark session: ingest -> embed -> topics -> als ->
score -> evaluate, each stage a nested MLflow run of one parent run."""

from __future__ import annotations

from pyspark.sql import SparkSession

from hybridrec.config.loader import Config
from hybridrec.ops.runner import JobFn, run_stages
from jobs import als, embed, evaluate, ingest, score, topics

STAGES: dict[str, JobFn] = {
    ingest.NAME: ingest.run,
    embed.NAME: embed.run,
    topics.NAME: topics.run,
    als.NAME: als.run,
    score.NAME: score.run,
    evaluate.NAME: evaluate.run,
}


def run_pipeline(
    spark: SparkSession, cfg: Config, run_id: str, stages: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Run ``stages`` (default: all, in order) and return each stage's results."""
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return run_stages(spark, cfg, run_id, {name: STAGES[name] for name in chosen})
