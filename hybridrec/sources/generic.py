"""Any Parquet, CSV or JSON tables, mapped onto the raw shape by a column mapping in config.

``columns`` maps our column to theirs (``{user_id: customer, event_ts: ts}``); a column that is
not mapped and not present under our name is null (a table without ``event_type`` gets
``default_event_type``). Timestamps may be epoch seconds, epoch milliseconds or ISO strings.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config import Config
from hybridrec.sources import BEHAVIOUR_SCHEMA, ITEM_SCHEMA, REVIEW_SCHEMA, RawTables


def read(spark: SparkSession, cfg: Config) -> RawTables:
    generic = cfg.source.generic
    tables = {}
    for name, schema in (
        ("behaviour", BEHAVIOUR_SCHEMA),
        ("reviews", REVIEW_SCHEMA),
        ("items", ITEM_SCHEMA),
    ):
        table = generic[name]
        if not table.path:
            tables[name] = None
            continue
        df = spark.read.format(generic.format).options(**generic.options).load(table.path)
        constants = {"event_type": generic.default_event_type} if name == "behaviour" else {}
        tables[name] = to_raw(
            df,
            schema,
            dict(table.columns),
            f"{name}:{generic.format}:{table.path}",
            constants=constants,
        )
    if tables["behaviour"] is None and tables["reviews"] is None:
        raise ValueError("source.generic needs behaviour.path or reviews.path (or both)")
    return RawTables(**tables)


def to_raw(
    df: DataFrame,
    schema: T.StructType,
    columns: Mapping[str, str],
    source: str,
    *,
    constants: Mapping[str, str] | None = None,
) -> DataFrame:
    """Select and rename ``df``'s columns into ``schema``; keep the input row as JSON in ``raw``.

    Raises:
        ValueError: a mapping names a column we do not know or one the input does not have.
    """
    unknown = set(columns) - set(schema.fieldNames())
    if unknown:
        raise ValueError(
            f"{source}: unknown target column(s) {sorted(unknown)} in the mapping; "
            f"known: {schema.fieldNames()}"
        )
    missing = {theirs for theirs in columns.values() if theirs not in df.columns}
    if missing:
        raise ValueError(
            f"{source}: mapped column(s) {sorted(missing)} not in the input, which has {df.columns}"
        )
    constants = constants or {}
    selected = []
    for field in schema.fields:
        theirs = columns.get(field.name, field.name if field.name in df.columns else None)
        if theirs is not None:
            value = F.col(f"`{theirs}`")
        elif field.name in constants:
            value = F.lit(constants[field.name])
        else:
            value = F.lit(None)
        if field.name == "rating":
            # The text is kept too, so that a non-numeric rating is rejected, not nulled.
            text = value.cast("string")
            selected += [text.alias("rating_raw"), text.try_cast("double").alias("rating")]
            continue
        selected.append(value.cast(field.dataType).alias(field.name))
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    return df.select(*selected, raw.alias("raw"), F.lit(source).alias("source"))
