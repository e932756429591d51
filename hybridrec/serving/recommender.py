"""The served recommender as an MLflow model: the run's ranking of its served fold, loadable and
servable without Spark.

``export`` writes what ranking one user needs, from a complete run's snapshots:

- ``catalog.npz``: the served (test) fold's item catalog (``ItemCatalog``'s arrays: ALS and text
  vectors, popularity, co-occurrence, text and what-came-next neighbour lists) and the ALS item
  factors a new user's factors are folded in against;
- ``users/``: Parquet, one row per user the run ranked (their history as catalog indices, newest
  first, ALS factors and text vector: what the score job's kernel reads);
- ``serving.json``: the picked weights (de-biasing included), recent sharpness, ranking mode and
  ALS settings; and the config sections the kernel reads (score, embed, ingest, als, ranker);
- ``ranker.ubj``, where the run serves its learned ranker: the xgboost model, and in
  ``catalog.npz`` the items' age and trend and the fold's clock it reads;
- where the run has topics (the topics stage): each catalog item's topic and the topics' labels
  in ``catalog.npz``, and each user's interest tags (``tag_topic_ids``, ``tags``) in ``users/``.

``HybridRecommender.predict`` takes rows of ``user_id`` and, for a user the run has not seen,
optionally that user's events (``item_id``, ``event_type``, ``event_ts``, ``rating``,
``review_text``); it returns the recommendations table's columns for each user. A known user is
ranked from the run's state by the score job's own kernel (the learned ranker's where the run
serves it, else ``scoring.recommend_block``), so the list equals the ``recommendations``
table's; a new user's events are folded in as the stream does on a small micro-batch (ALS
fold-in, review texts encoded by the run's encoder, the user's text vector), then ranked the
same way. A known user sent with events is refused: events since
the run are the stream job's (``recommendations_live``). Where the run has topics, each row
also carries the user's tags (``user_tags``) and, for a pick the text parts explain that lies in
one of them, ``interest`` and ``interest_topic_id``, as ``recommendations_explained`` names them;
a user the run has not seen has no interests yet (null).

Memory: one process holds the catalog (items x (ALS rank + text dim) floats and the neighbour
lists) and every user's row (users x (rank + dim) floats): about 1.7 KB per user and 2 KB per
item at rank 32 and 384 text dimensions, so 300,000 users and 10,000 items take about 0.5 GB.
Only a catalog ranked in memory (``score.candidates.max_memory_items``) can be exported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, fields
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EMBEDDING_COL,
    EVENT_COL,
    FACTORS_COL,
    ITEM_COL,
    ITEM_TOPICS,
    RATING_COL,
    TEXT_COL,
    TOPICS,
    TS_COL,
    USER_COL,
    USER_INTERESTS,
)
from hybridrec.models.foldin import AlsSettings, gram
from hybridrec.views import INTEREST_PREFIX
from udfs.learned_ranker import ItemContext
from udfs.ranking_kernel import PARTS, ItemCatalog
from udfs.reasons import text_explained

log = logging.getLogger(__name__)

SERVED_MODEL = "served_model"  # its artifact path in the MLflow run
CATALOG_FILE = "catalog.npz"
USERS_DIR = "users"
STATE_FILE = "serving.json"
RANKER_FILE = "ranker.ubj"
# What the kernel, the fold-in and the encoder read of the run's config; nothing else (no
# credentials) travels with the model.
CONFIG_SECTIONS = ("score", "embed", "ingest", "als", "ranker")
EVENT_INPUT = [ITEM_COL, EVENT_COL, TS_COL, RATING_COL, TEXT_COL]
POPULAR_ONLY = {part: 1.0 if part == "pop" else 0.0 for part in PARTS}
TAG_COLUMNS = ["tag_topic_ids", "tags"]
NO_TOPIC = -1


class UnservableRequest(ValueError):
    """A request the model refuses; the message says why and what to send instead."""


def export(spark, warehouse, cfg: Config, run_id: str, folder: Path, staging: str) -> None:
    """Write run ``run_id``'s served ranking into ``folder`` (the module doc). ``staging``:
    storage the executors and the driver share, where Spark writes the users' rows before they
    are copied into ``folder``."""
    from hybridrec.ranking import scoring
    from hybridrec.streaming.live import SERVED_FOLD, has_topics, load_serving

    serving = load_serving(spark, cfg, run_id, warehouse)
    if serving.catalog is None:
        raise UnservableRequest(
            f"{serving.mode.describe()}: the served model holds its catalog in one process, "
            f"up to score.candidates.max_memory_items ({cfg.score.candidates.max_memory_items})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: getattr(serving.catalog, f.name) for f in fields(ItemCatalog)}
    arrays["ids"] = np.asarray(arrays["ids"]).astype(str)
    ranker = serving.ranker
    if ranker is not None:
        (folder / RANKER_FILE).write_bytes(ranker.model)
        arrays |= {
            "item_age_days": ranker.context.age_days,
            "item_trend": ranker.context.trend,
            "reference_ts": np.float64(ranker.context.reference_ts),
        }
    topics = has_topics(serving.warehouse, cfg)
    if topics:
        arrays |= topic_arrays(serving.warehouse, arrays["ids"])
    np.savez(
        folder / CATALOG_FILE,
        **arrays,
        factor_items=np.asarray(serving.factor_items).astype(str),
        factors=serving.factors,
    )
    users = scoring.load_user_frame(spark, serving.warehouse, serving.catalog, SERVED_FOLD)
    if topics:
        tags = serving.warehouse.read(USER_INTERESTS).select(USER_COL, *TAG_COLUMNS)
        users = users.join(tags, USER_COL, "left")
    staged = f"{staging.rstrip('/')}/served_users_{run_id}"
    users.drop("target").write.mode("overwrite").parquet(staged)
    # Through Hadoop's file system, as MLflow copies a Spark model: the staging folder may be
    # HDFS or an object store, not a local path.
    jvm = spark.sparkContext._jvm
    source = jvm.org.apache.hadoop.fs.Path(staged)
    fs = source.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    fs.copyToLocalFile(False, source, jvm.org.apache.hadoop.fs.Path(str(folder / USERS_DIR)), True)
    fs.delete(source, True)
    state = {
        "run_id": run_id,
        "weights": serving.weights,
        "recent_sharpness": serving.recent_sharpness,
        "over_candidates": serving.mode.over_candidates,
        "ranker": ranker is not None,
        "als": asdict(serving.als),
        "model_id": serving.model_id,
        "config": {section: cfg[section].to_dict() for section in CONFIG_SECTIONS},
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1, default=float))


def topic_arrays(served, ids: np.ndarray) -> dict[str, np.ndarray]:
    """``item_topic`` (each catalog item's topic, ``NO_TOPIC`` for none), ``topic_ids`` and
    ``topic_labels``: what naming an interest needs of run ``served``'s topics (its
    ``item_topics`` and ``topics`` tables, catalog-sized and k rows)."""
    assigned = served.read(ITEM_TOPICS).select(ITEM_COL, "topic_id").toPandas()
    labels = served.read(TOPICS).select("topic_id", "label").toPandas().sort_values("topic_id")
    position = pd.Index(ids).get_indexer(assigned[ITEM_COL])
    item_topic = np.full(len(ids), NO_TOPIC, dtype=np.int32)
    item_topic[position[position >= 0]] = assigned["topic_id"].to_numpy()[position >= 0]
    return {
        "item_topic": item_topic,
        "topic_ids": labels["topic_id"].to_numpy().astype(np.int32),
        "topic_labels": labels["label"].to_numpy().astype(str),
    }


class ServedRanking:
    """A run's exported ranking, in this process (no Spark)."""

    def __init__(self, folder: Path):
        from hybridrec.ranking import rank
        from hybridrec.ranking.learned import RankerInputs
        from hybridrec.streaming.live import Serving
        from hybridrec.streaming.local import LocalServing

        state = json.loads((folder / STATE_FILE).read_text())
        with np.load(folder / CATALOG_FILE, allow_pickle=False) as saved:
            catalog = ItemCatalog(**{f.name: saved[f.name] for f in fields(ItemCatalog)})
            factor_items, factors = saved["factor_items"], saved["factors"]
            ranker = None
            if state.get("ranker"):
                context = ItemContext(
                    age_days=saved["item_age_days"],
                    trend=saved["item_trend"],
                    reference_ts=float(saved["reference_ts"]),
                )
                ranker = RankerInputs(catalog, context, (folder / RANKER_FILE).read_bytes())
            self.item_topic = None
            if "item_topic" in saved.files:
                self.item_topic = pd.Series(saved["item_topic"], index=catalog.ids)
                self.labels = dict(
                    zip(saved["topic_ids"].tolist(), saved["topic_labels"].tolist(), strict=True)
                )
        self.cfg = Config(state["config"])
        self.run_id = state["run_id"]
        how = rank.MEMORY if state["over_candidates"] else rank.FULL
        self.serving = Serving(
            run_id=self.run_id,
            warehouse=None,
            mode=rank.RankingMode(len(catalog), how),
            catalog=catalog,
            weights=state["weights"],
            recent_sharpness=float(state["recent_sharpness"]),
            als=AlsSettings(**state["als"]),
            factor_items=factor_items,
            factors=factors,
            factor_gram=gram(factors),
            model_id=state["model_id"],
            ranker=ranker,
        )
        item_vectors = pd.Series(list(catalog.text), index=catalog.ids, dtype=object)
        self.local = LocalServing(
            interactions=None, texts=None, item_vectors=item_vectors[catalog.has_text]
        )
        users = pd.read_parquet(folder / USERS_DIR)
        self.users = users.set_index(USER_COL, drop=False)
        log.info(
            "served model of run %s: %d items, %d users", self.run_id, len(catalog), len(users)
        )

    def recommend(self, request: pd.DataFrame) -> pd.DataFrame:
        """The recommendations table's rows for every user of ``request`` (the module doc),
        in the order the users first appear."""
        from hybridrec.ranking import scoring
        from hybridrec.streaming import local

        if USER_COL not in request.columns:
            raise UnservableRequest(f"the request has no {USER_COL} column")
        request = request.assign(**{USER_COL: request[USER_COL].astype(str)})
        order = list(dict.fromkeys(request[USER_COL]))
        has_event = (
            request[ITEM_COL].notna()
            if ITEM_COL in request.columns
            else pd.Series(False, index=request.index)
        )
        with_events = set(request.loc[has_event, USER_COL])
        known = [u for u in order if u in self.users.index]
        refused = sorted(with_events & set(known))
        if refused:
            raise UnservableRequest(
                f"users {refused[:5]} are known to run {self.run_id}: send their ids alone "
                "(events since the run are folded in by the stream job, recommendations_live)"
            )
        frames = []
        if known:
            block = self.users.loc[known].reset_index(drop=True).assign(target=None)
            frames.append(local.rank_block(self.serving, block, self.cfg))
        new = [u for u in order if u in with_events]
        if new:
            frames.append(self._fold_in(request[has_event & request[USER_COL].isin(new)]))
        unknown = [u for u in order if u not in self.users.index and u not in with_events]
        if unknown:  # no history, no vector: popularity is all there is to rank them by
            cold = pd.DataFrame(
                {
                    USER_COL: unknown,
                    "seen": [np.empty(0, np.int32)] * len(unknown),
                    FACTORS_COL: [None] * len(unknown),
                    EMBEDDING_COL: [None] * len(unknown),
                    "target": [None] * len(unknown),
                }
            )
            frames.append(
                scoring.recommend_block(
                    cold,
                    self.serving.catalog,
                    {"hybrid": POPULAR_ONLY},
                    self.cfg,
                    self.serving.recent_sharpness,
                    over_candidates=self.serving.mode.over_candidates,
                )
            )
        lists = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if lists.empty:
            return lists
        lists["_user_order"] = lists[USER_COL].map({u: n for n, u in enumerate(order)})
        lists = lists.sort_values(["_user_order", "rank"], kind="stable")
        lists = lists.drop(columns=["_user_order", "model"], errors="ignore")
        return self._with_interests(lists.reset_index(drop=True))

    def _with_interests(self, lists: pd.DataFrame) -> pd.DataFrame:
        """``lists`` with ``user_tags``, ``interest`` and ``interest_topic_id`` where the run
        has topics: the interest of a text-explained pick that lies in one of its user's tags
        (``recommendations_explained``'s rule); null for users the run has not seen."""
        if self.item_topic is None:
            return lists
        users = lists[USER_COL].drop_duplicates()
        known = (
            self.users.reindex(users.to_numpy())[TAG_COLUMNS]
            .reset_index(drop=True)
            .assign(**{USER_COL: users.to_numpy()})
        )
        tagged = (
            known[[USER_COL, "tag_topic_ids"]]
            .explode("tag_topic_ids")
            .dropna()
            .rename(columns={"tag_topic_ids": "_topic"})
            .astype({"_topic": np.int64})
            .assign(_tagged=True)
        )
        topic = self.item_topic.reindex(lists[ITEM_COL]).fillna(NO_TOPIC).astype(np.int64)
        lists = lists.assign(_topic=topic.to_numpy()).merge(
            tagged, on=[USER_COL, "_topic"], how="left"
        )
        named = text_explained(lists["reason"]) & lists["_tagged"].eq(True).to_numpy()
        tags = {  # per requested user: lists, not arrays, for the JSON answer
            user: [str(t) for t in user_tags] if isinstance(user_tags, np.ndarray | list) else None
            for user, user_tags in zip(known[USER_COL], known["tags"], strict=True)
        }
        labels = lists["_topic"].map(self.labels)
        # Python ints and None (object columns): what the REST answer's JSON can carry.
        return lists.drop(columns=["_topic", "_tagged"]).assign(
            user_tags=lists[USER_COL].map(tags).to_numpy(),
            interest=np.where(named, INTEREST_PREFIX + labels.fillna("").astype(str), None),
            interest_topic_id=np.where(named, lists["_topic"].astype(object), None),
        )

    def _fold_in(self, events: pd.DataFrame) -> pd.DataFrame:
        from hybridrec.streaming import local

        history = events.reindex(columns=[USER_COL, *EVENT_INPUT, "origin"]).copy()
        history[EVENT_COL] = history[EVENT_COL].fillna("rating")
        history[RATING_COL] = pd.to_numeric(history[RATING_COL], errors="coerce")
        stamps = pd.to_datetime(history[TS_COL], utc=True, errors="coerce")
        history[TS_COL] = stamps.fillna(pd.Timestamp.now(tz="UTC"))
        history[ITEM_COL] = history[ITEM_COL].astype(str)
        texts = history[TEXT_COL]
        history[TEXT_COL] = texts.where(texts.notna(), None)
        # No vector store (``texts`` None): every review text is encoded in this process.
        lists, _ = local.live_lists(self.serving, self.local, history, self.cfg, self.run_id)
        return lists.drop(columns="newest_event_ts")


class HybridRecommender(mlflow.pyfunc.PythonModel):
    """The MLflow ``python_function`` model around ``ServedRanking``; its artifact ``ranking``
    is ``export``'s folder."""

    def load_context(self, context) -> None:
        self.ranking = ServedRanking(Path(context.artifacts["ranking"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.ranking.recommend(pd.DataFrame(model_input))


def log_served_model(spark, warehouse, cfg: Config, run_id: str) -> str | None:
    """Export run ``run_id``'s ranking, log it on the active (job) run as the MLflow model
    ``served_model`` and register it as a version of ``mlflow.registered_model`` tagged with
    the run id; a retried run's earlier version is deleted. Returns ``models:/<name>/<version>``.
    The model carries hybridrec and udfs as code and names its requirements (inferring them
    reloads the model in a subprocess)."""
    import tempfile
    from importlib import resources

    import pyspark
    from mlflow.tracking import MlflowClient

    from hybridrec.ops import tracking

    name = cfg.mlflow.registered_model
    with tempfile.TemporaryDirectory(prefix="hybridrec-served-") as tmp:
        folder = Path(tmp) / "ranking"
        export(spark, warehouse, cfg, run_id, folder, warehouse.staging_path())
        first_user = str(pd.read_parquet(folder / USERS_DIR, columns=[USER_COL])[USER_COL].min())
        code = [
            str(tracking.copy_package(Path(tmp) / "code" / top, resources.files(top)))
            for top in ("hybridrec", "udfs")
        ]
        info = mlflow.pyfunc.log_model(
            name=SERVED_MODEL,
            # From the copy: on a cluster this module is imported from a zip, not a folder.
            python_model=str(Path(code[0]) / "serving" / "served_model.py"),
            artifacts={"ranking": str(folder)},
            code_paths=code,
            pip_requirements=_requirements(pyspark.__version__),
            registered_model_name=name,
            tags={tracking.SERVED_RUN_TAG: run_id},
            signature=signature(),
            # One known user: saved beside the model, and MLflow checks it predicts.
            input_example=pd.DataFrame({USER_COL: [first_user]}),
        )
    client = MlflowClient()
    version = info.registered_model_version
    client.set_model_version_tag(name, version, tracking.SERVED_RUN_TAG, run_id)
    for earlier in client.search_model_versions(f"name = '{name}'"):
        if (
            str(earlier.version) != str(version)
            and earlier.tags.get(tracking.SERVED_RUN_TAG) == run_id
        ):
            client.delete_model_version(name, earlier.version)
    uri = f"models:/{name}/{version}"
    log.info("served model of run %s registered: %s", run_id, uri)
    return uri


def signature():
    """The request: ``user_id``, and the optional event columns of a user the run has not seen;
    the response: the recommendations table's columns, and the interests where the run has
    topics."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    from hybridrec.ranking.scoring import RECOMMENDATION_SCHEMA

    request = Schema(
        [
            ColSpec("string", USER_COL),
            ColSpec("string", ITEM_COL, required=False),
            ColSpec("string", EVENT_COL, required=False),
            ColSpec("string", TS_COL, required=False),
            ColSpec("double", RATING_COL, required=False),
            ColSpec("string", TEXT_COL, required=False),
        ]
    )
    types = {"StringType": "string", "IntegerType": "integer", "DoubleType": "double"}
    response = Schema(
        [
            ColSpec(types.get(type(f.dataType).__name__, "string"), f.name, required=False)
            for f in RECOMMENDATION_SCHEMA.fields
            if f.name != "model"
        ]
        + [
            ColSpec(Array("string"), "user_tags", required=False),
            ColSpec("string", "interest", required=False),
            ColSpec("integer", "interest_topic_id", required=False),
        ]
    )
    return ModelSignature(inputs=request, outputs=response)


def _requirements(pyspark_version: str) -> list[str]:
    from importlib.metadata import version

    from hybridrec.ops.tracking import distribution_requirement

    pinned = ["numpy", "pandas", "pyarrow", "mlflow", "torch", "transformers"]
    return [
        f"pyspark=={pyspark_version}",
        *(f"{p}=={version(p)}" for p in pinned),
        distribution_requirement(("xgboost-cpu", "xgboost")),
    ]
