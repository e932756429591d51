"""MovieLens (ml-latest-small and its siblings): ``ratings.csv`` is behaviour, ``tags.csv`` is
review text (one tag row, one review), ``movies.csv`` gives titles and genres as item text.
Files may be plain or gzip (``ratings.csv.gz``). They are RFC 4180 CSV and read as the generic
source reads CSV (``generic.read_csv``): a record of the wrong width is rejected, not cut to fit,
and ``raw`` is the record as CSV. Records end at the file's line ending (``\n`` or ``\r\n``, as its
first line ends), never at a bare ``\r``: one inside a tag is text, and the last field of a CRLF
file keeps no ``\r``."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hybridrec.sources import BEHAVIOUR_SCHEMA, ITEM_SCHEMA, REVIEW_SCHEMA, RawTables
from hybridrec.sources.generic import read_csv, to_raw


def _find(folder: str, name: str, *, required: bool) -> str | None:
    for candidate in (f"{folder}/{name}", f"{folder}/{name}.gz"):
        if "://" in folder or Path(candidate).exists():
            return candidate
    if required:
        raise FileNotFoundError(f"source.movielens.path {folder!r} has no {name}(.gz)")
    return None


def read(spark: SparkSession, folder: str) -> RawTables:
    def csv(path: str, **options: str):
        return read_csv(spark, path, options)

    ratings_path = _find(folder, "ratings.csv", required=True)
    behaviour = to_raw(
        # Numbers only, never a quoted line break: read line by line, so a big file splits.
        csv(ratings_path, multiLine="false"),
        BEHAVIOUR_SCHEMA,
        {"user_id": "userId", "item_id": "movieId", "rating": "rating", "event_ts": "timestamp"},
        f"behaviour:movielens:{ratings_path}",
        constants={"event_type": "rating"},
    )
    reviews = None
    tags_path = _find(folder, "tags.csv", required=False)
    if tags_path:
        reviews = to_raw(
            csv(tags_path),
            REVIEW_SCHEMA,
            {
                "user_id": "userId",
                "item_id": "movieId",
                "review_text": "tag",
                "event_ts": "timestamp",
            },
            f"reviews:movielens:{tags_path}",
        )
    items = None
    movies_path = _find(folder, "movies.csv", required=False)
    if movies_path:
        movies = csv(movies_path).withColumn(
            "genres",
            F.when(
                F.col("genres") != "(no genres listed)", F.regexp_replace("genres", r"\|", ", ")
            ),
        )
        items = to_raw(
            movies,
            ITEM_SCHEMA,
            {"item_id": "movieId", "title": "title", "description": "genres"},
            f"items:movielens:{movies_path}",
        )
    return RawTables(behaviour=behaviour, reviews=reviews, items=items)
