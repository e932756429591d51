"""embed.backend: the bf16 and ONNX encoders (int8, fused fp32) against the torch one, the ONNX
export cache, the cache key of each backend's vectors, the CPU gates of int8 and bf16 and the
embed tasks' sizing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pyspark.sql import functions as F

from hybridrec.config.loader import ConfigError, load_config
from hybridrec.models import embedding
from udfs import onnx_encoder
from udfs.cpu import CpuInfo, parse_cpuinfo, this_cpu
from udfs.embedding_udf import encode_texts_udf
from udfs.encoder import (
    TextEncoder,
    bundled_model_path,
    get_encoder,
    refuse_bf16_without_support,
    resolve_model,
)

MAX_LENGTH = 128
REVIEWS = [
    "Great moisturiser, my dry skin loves it and it smells lovely.",
    "Arrived broken.",
    "The shampoo left my hair greasy after two days; I would not buy it again.",
    "Works as described " * 40,  # truncated at MAX_LENGTH tokens
]
# Texts of a token or none: pooled over so few tokens, their int8 vectors are less close (~0.97).
TEXTS = [*REVIEWS, "ok", ""]
# int8 is refused on a CPU without VNNI or AMX (onnx_encoder.refuse_int8_without_vnni).
int8_cpu = pytest.mark.skipif(
    this_cpu().flags is not None and not (this_cpu().has("VNNI") or this_cpu().has("AMX")),
    reason=f"int8 ONNX is refused on {this_cpu().describe()}",
)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A cache folder holding the bundled model's export (made once for this module)."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    onnx_encoder.exported_model(bundled_model_path(), MAX_LENGTH, str(folder))
    return folder


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.slow
@int8_cpu
def test_onnx_vectors_are_unit_and_close_to_torch(onnx_cache):
    onnx = get_encoder(None, "cpu", MAX_LENGTH, 4, "onnx", str(onnx_cache))
    torch = get_encoder(None, "cpu", MAX_LENGTH, 4)
    assert isinstance(onnx, onnx_encoder.OnnxTextEncoder)

    got, want = onnx.encode(TEXTS), torch.encode(TEXTS)

    assert got.shape == want.shape == (len(TEXTS), 384)
    assert got.dtype == np.float32
    assert np.linalg.norm(got, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert _cosines(got, want)[: len(REVIEWS)].mean() >= 0.99
    assert _cosines(got, want).min() >= 0.95
    # Not just any unit vectors: each text is closest to its own torch vector.
    assert (np.argmax(got @ want.T, axis=1) == np.arange(len(TEXTS))).all()


@pytest.mark.slow
@int8_cpu
def test_a_cached_export_is_loaded_not_exported_again(onnx_cache, monkeypatch):
    files = sorted(onnx_cache.iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_encoder, "_export", no_export)
    encoder = onnx_encoder.OnnxTextEncoder(
        bundled_model_path(),
        max_length=MAX_LENGTH,
        batch_size=4,
        threads=1,
        cache_dir=str(onnx_cache),
    )

    assert [encoder.model_file] == files  # the one cached file, nothing left half-written
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert np.linalg.norm(encoder.encode(TEXTS[:2]), axis=1) == pytest.approx(1.0, abs=1e-5)


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(source, out):
        out.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_encoder, "_export", broken)

    with pytest.raises(RuntimeError, match="disk full"):
        onnx_encoder.exported_model(bundled_model_path(), MAX_LENGTH, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_export_cache_key_names_length_and_onnxruntime_version():
    import onnxruntime

    path = bundled_model_path()
    key = onnx_encoder.cache_key(path, 256)

    assert key != onnx_encoder.cache_key(path, 128)
    assert f"ort{onnxruntime.__version__}" in key
    assert key.endswith(".onnx")


def test_each_backend_has_its_own_vector_cache_key():
    _, torch_id = resolve_model(None, None, 256, "torch")
    _, onnx_id = resolve_model(None, None, 256, "onnx")
    _, fp32_id = resolve_model(None, None, 256, "onnx-fp32")
    _, bf16_id = resolve_model(None, None, 256, "torch-bf16")

    assert torch_id == "sentence-transformers/all-MiniLM-L6-v2@256"
    assert onnx_id == torch_id + "+onnx-int8"
    assert fp32_id == torch_id + "+onnx-fp32"
    assert bf16_id == torch_id + "+bf16"
    path = bundled_model_path()
    assert onnx_encoder.cache_key(path, 256, "int8") != onnx_encoder.cache_key(path, 256, "fp32")
    assert resolve_model(None, None, 256) == resolve_model(None, None, 256, "torch")


def test_config_rejects_an_unknown_backend_and_onnx_on_cuda():
    assert load_config([], ["embed.backend=onnx"]).embed.backend == "onnx"
    with pytest.raises(ConfigError, match=r"embed.backend = 'tensorrt' .* not one of"):
        load_config([], ["embed.backend=tensorrt"])
    for backend in ("onnx", "onnx-fp32", "torch-bf16"):
        with pytest.raises(ConfigError, match=r"backend .* CPU only, but embed.device = 'cuda'"):
            load_config([], [f"embed.backend={backend}", "embed.device=cuda"])
    assert load_config([], ["embed.device=cuda"]).embed.backend == "torch"


@pytest.mark.parametrize(
    ("n_texts", "per_task", "slots", "partitions", "tasks"),
    [
        (3000, 1000, 2, None, 4),  # 3 tasks would leave a slot idle for a third of the time
        (4000, 1000, 2, None, 4),
        (10, 1000, 2, None, 2),  # never fewer tasks than slots
        (0, 1000, 8, None, 8),
        (2500, 1000, 1, None, 3),
        (3000, 1000, 2, 5, 5),  # embed.partitions wins
    ],
)
def test_encode_tasks_come_in_whole_waves_of_slots(n_texts, per_task, slots, partitions, tasks):
    assert embedding.encode_task_count(n_texts, per_task, slots, partitions) == tasks


@pytest.mark.slow
@int8_cpu
def test_the_onnx_backend_through_spark_matches_in_process(spark, onnx_cache):
    texts = spark.createDataFrame([(t,) for t in TEXTS], "text string").withColumn(
        "text_hash", embedding.text_hash(F.col("text"))
    )
    encode = encode_texts_udf(
        model_path=None,
        device="auto",
        max_length=MAX_LENGTH,
        batch_size=4,
        backend="onnx",
        onnx_cache_dir=str(onnx_cache),
    )

    rows = embedding.encode_in_tasks(texts, encode, 2, "m+onnx-int8").collect()
    local = get_encoder(None, "cpu", MAX_LENGTH, 4, "onnx", str(onnx_cache)).encode(TEXTS)

    by_hash = {r.text_hash: np.array(r.embedding, dtype=np.float32) for r in rows}
    got = np.stack([by_hash[h] for h in texts.toPandas()["text_hash"]])
    assert {r.model_id for r in rows} == {"m+onnx-int8"}
    # Batches differ (two tasks), and dynamic quantisation scales by batch: close, not equal.
    assert _cosines(got, local).min() >= 0.98
    assert len(list(onnx_cache.iterdir())) == 1  # the workers used the cached export


CPUINFO = """processor\t: 0
model name\t: Some Xeon
flags\t\t: fpu sse2 avx avx2 {extra}

processor\t: 1
model name\t: Some Xeon
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni amx_int8
"""


@pytest.mark.parametrize(
    ("extra", "sets"),
    [
        ("", ["AVX2"]),
        ("avx512f avx512bw", ["AVX2", "AVX-512"]),
        ("avx_vnni", ["AVX2", "VNNI"]),  # VNNI without AVX-512 (Alder Lake and later)
        ("avx512f avx512_vnni amx_tile amx_int8", ["AVX2", "AVX-512", "VNNI", "AMX"]),
        ("avx512f avx512_bf16", ["AVX2", "AVX-512", "BF16"]),
    ],
)
def test_the_cpu_is_described_by_its_model_and_vector_sets(extra, sets):
    cpu = parse_cpuinfo(CPUINFO.format(extra=extra))  # the first processor's block only

    assert cpu.model == "Some Xeon"
    assert cpu.vector_sets() == sets
    assert cpu.describe() == f"Some Xeon ({' '.join(sets)})"


def test_int8_is_refused_on_a_cpu_without_vnni_or_amx():
    with pytest.raises(RuntimeError, match=r"onnx \(int8\) on Old \(AVX2\).* onnx-fp32 or torch"):
        onnx_encoder.refuse_int8_without_vnni(CpuInfo("Old", frozenset({"avx2"})))
    for flags in ({"avx2", "avx512_vnni"}, {"amx_int8"}, None):
        onnx_encoder.refuse_int8_without_vnni(CpuInfo("New", flags and frozenset(flags)))


@pytest.mark.slow
def test_fused_fp32_onnx_vectors_are_the_torch_ones(tmp_path):
    fp32 = get_encoder(None, "cpu", MAX_LENGTH, 4, "onnx-fp32", str(tmp_path))
    torch = get_encoder(None, "cpu", MAX_LENGTH, 4)
    assert isinstance(fp32, onnx_encoder.OnnxTextEncoder)

    got, want = fp32.encode(TEXTS), torch.encode(TEXTS)

    assert got.shape == want.shape and got.dtype == np.float32
    # Float all the way: the fusions reorder sums, nothing is rounded to int8.
    assert _cosines(got, want).min() >= 0.9999
    (exported,) = tmp_path.iterdir()
    assert exported.name.endswith("-fp32-fused1.onnx")
    # Fused: one attention node per layer (6), not its matmuls, masking and softmax.
    import onnx

    ops = Counter(node.op_type for node in onnx.load(str(exported)).graph.node)
    assert ops["Attention"] == 6 and ops["Softmax"] == 0, ops
    assert ops["SkipLayerNormalization"] == 12 and ops["BiasGelu"] == 6, ops


def test_bf16_is_refused_on_a_cpu_without_amx_or_avx512_bf16():
    with pytest.raises(RuntimeError, match=r"torch-bf16 on Old \(AVX2 AVX-512\).* use embed"):
        refuse_bf16_without_support(CpuInfo("Old", frozenset({"avx2", "avx512f"})))
    for flags in ({"avx512_bf16"}, {"amx_bf16", "amx_tile"}, None):
        refuse_bf16_without_support(CpuInfo("New", flags and frozenset(flags)))


@pytest.mark.skipif(not this_cpu().has("BF16"), reason=f"no bf16 on {this_cpu().describe()}")
def test_bf16_vectors_are_the_float_ones_to_a_cosine_of_0_999():
    bf16 = get_encoder(None, "cpu", MAX_LENGTH, 4, "torch-bf16")
    float32 = get_encoder(None, "cpu", MAX_LENGTH, 4)
    assert isinstance(bf16, TextEncoder) and bf16.bf16 and not float32.bf16

    got, want = bf16.encode(TEXTS), float32.encode(TEXTS)

    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.linalg.norm(got, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert _cosines(got, want).min() >= 0.999
    assert not np.array_equal(got, want)  # bf16 did run: not the float vectors themselves
