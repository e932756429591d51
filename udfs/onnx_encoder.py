"""The encoder on ONNX Runtime: the same model exported to ONNX at run time, then either quantised
to int8 (``int8``) or kept in float with its transformer layers fused (``fp32``).

Export (torch's TorchScript-based exporter, which needs no extra package), dynamic int8
quantisation (``onnxruntime.quantization.quantize_dynamic``) or ONNX Runtime's offline BERT
fusions (attention, layer norm, GELU: ``onnxruntime.transformers.optimizer``) run once per host and
are cached on local disk, keyed by model folder, max_length, onnxruntime version and recipe. A
worker writes the file under a temporary name and renames it into place, so another worker on the
host never reads a half-written model. Pooling and batching are :class:`udfs.encoder.TextEncoder`'s:
mean over the attention mask, L2 normalisation, batches of similar length. CPU only.

int8 is refused on a CPU without VNNI or AMX (:mod:`udfs.cpu`): there its kernels are not faster
than float ones, and its vectors are further from the model's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from udfs.batching import encode_by_length
from udfs.cpu import CpuInfo, refuse_without, this_cpu

log = logging.getLogger(__name__)
# Bump a recipe when its export, quantisation or fusion changes: cached files of an older one are
# stale.
RECIPES = {"int8": "int8-pc1", "fp32": "fp32-fused1"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Kept in float: the first layer's feed-forward down-projection. Its input (after GELU) has the
# outliers per-tensor activation quantisation handles worst; on all-MiniLM-L6-v2 keeping it moves
# the mean cosine to the float vectors from 0.990 to 0.992 on review texts at a small speed cost.
FLOAT_NODES = re.compile(r"/encoder/layer\.0/output/dense/")


def default_cache_dir() -> str:
    return str(Path(tempfile.gettempdir()) / "hybridrec-onnx")


def cache_key(path: str, max_length: int, precision: str = "int8") -> str:
    """A file name naming the model folder, max_length, onnxruntime version and recipe."""
    import onnxruntime

    folder = Path(path).resolve()
    weights = sorted(
        (f.name, f.stat().st_size, int(f.stat().st_mtime))
        for f in folder.iterdir()
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".json"}
    )
    digest = hashlib.sha256(repr((str(folder), weights)).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{folder.parent.name}-{folder.name}")
    recipe = RECIPES[precision]
    return f"{name}-{digest}-len{max_length}-ort{onnxruntime.__version__}-{recipe}.onnx"


def exported_model(
    path: str, max_length: int, cache_dir: str | None = None, precision: str = "int8"
) -> Path:
    """The ONNX file (``precision`` int8 or fp32) of the model in ``path``: from the cache, else
    exported into it."""
    folder = Path(cache_dir or default_cache_dir())
    target = folder / cache_key(path, max_length, precision)
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        log.info("exporting %s to ONNX %s (pid %d)", path, precision, os.getpid())
        if precision == "int8":
            _export(path, work / "float.onnx")
            _quantise(work / "float.onnx", work / "model.onnx")
        else:
            _export(path, work / "float.onnx", eager_attention=True)
            _fuse(work / "float.onnx", work / "model.onnx", path)
        os.replace(work / "model.onnx", target)  # atomic on one file system
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _export(path: str, out: Path, *, eager_attention: bool = False) -> None:
    """``eager_attention``: trace the plain attention code rather than the fused kernel's
    masking (NaN checks, ``Where``), whose graph ONNX Runtime's attention fusion does not
    recognise."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    extra = {"attn_implementation": "eager"} if eager_attention else {}
    model = AutoModel.from_pretrained(path, local_files_only=True, **extra).eval()
    # Two texts of different lengths: the traced graph sees padding and a batch above one.
    sample = tokenizer(["a", "a somewhat longer text"], padding=True, return_tensors="pt")
    names = [n for n in INPUTS if n in sample]

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporter
        torch.onnx.export(
            Hidden(),
            tuple(sample[n] for n in names),
            str(out),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantise(source: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [
        n.name
        for n in onnx.load(str(source), load_external_data=False).graph.node
        if FLOAT_NODES.search(n.name)
    ]
    # Per-channel weights: per-tensor int8 weights put the vectors at a mean cosine of ~0.93.
    quantize_dynamic(
        source,
        out,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep,
    )


def _fuse(source: Path, out: Path, path: str) -> None:
    """ONNX Runtime's BERT fusions, applied once and saved: each session then loads the fused
    graph instead of matching its patterns again."""
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimizer.optimize_model(
            str(source),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
        )
    fused.save_model_to_file(str(out))


def refuse_int8_without_vnni(cpu: CpuInfo) -> None:
    """int8 only where the CPU multiplies int8 in its vector units; unknown flags pass."""
    refuse_without(
        cpu,
        ("VNNI", "AMX"),
        f"embed.backend onnx (int8) on {cpu.describe()}: without VNNI or AMX int8 is no "
        "faster than float; use embed.backend onnx-fp32 or torch on this host",
    )


class OnnxTextEncoder:
    """:class:`udfs.encoder.TextEncoder` on ONNX Runtime, int8 or fp32, CPU."""

    def __init__(
        self,
        path: str,
        *,
        max_length: int,
        batch_size: int,
        threads: int,
        cache_dir: str | None = None,
        precision: str = "int8",
    ):
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        if precision == "int8":
            refuse_int8_without_vnni(this_cpu())
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.dim = int(AutoConfig.from_pretrained(path, local_files_only=True).hidden_size)
        self.model_file = exported_model(path, max_length, cache_dir, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.model_file), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors (len(texts) x dim, float32) in the order of ``texts``."""
        return encode_by_length(texts, self.batch_size, self.dim, self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        (hidden,) = self.session.run(None, {n: batch[n].astype(np.int64) for n in self.inputs})
        mask = batch["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)
