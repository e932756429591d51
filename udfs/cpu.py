"""The CPU a process runs on: its model and the vector instruction sets that decide how fast each
encoder backend is. An int8 matrix product beats a float one only where the CPU multiplies int8 in
its vector units (VNNI, or AMX's tiles); without them ONNX Runtime's int8 kernels fall back to
slower paths. Benchmarks print this beside their figures: a speed-up measured on one CPU does not
travel to another."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The sets that matter for the encoder, each present when the CPU reports any of its flags.
VECTOR_SETS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AMX": ("amx_int8", "amx_bf16", "amx_tile"),
    "BF16": ("avx512_bf16", "amx_bf16"),
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str] | None  # None: not known on this platform

    def has(self, vector_set: str) -> bool:
        return self.flags is not None and any(f in self.flags for f in VECTOR_SETS[vector_set])

    def vector_sets(self) -> list[str]:
        return [name for name in VECTOR_SETS if self.has(name)]

    def describe(self) -> str:
        """``Intel(R) Xeon(R) Processor (AVX2 AVX-512 VNNI AMX)``."""
        if self.flags is None:
            return f"{self.model} (vector flags unknown)"
        sets = " ".join(self.vector_sets()) or "none of " + "/".join(VECTOR_SETS)
        return f"{self.model} ({sets})"


def refuse_without(cpu: CpuInfo, vector_sets: tuple[str, ...], refusal: str) -> None:
    """Raise ``RuntimeError(refusal)`` where ``cpu`` has none of ``vector_sets``; a CPU whose
    flags are unknown passes."""
    if cpu.flags is not None and not any(cpu.has(name) for name in vector_sets):
        raise RuntimeError(refusal)


def _platform_model() -> str:
    return platform.processor() or platform.machine() or "unknown CPU"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags in a Linux ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the end of the first processor's block
            continue
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags")
    return CpuInfo(
        fields.get("model name") or _platform_model(),
        frozenset(flags.split()) if flags is not None else None,
    )


@lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This host's CPU (flags None where there is no ``/proc/cpuinfo``)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return CpuInfo(_platform_model(), None)
