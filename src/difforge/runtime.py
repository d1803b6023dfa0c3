"""Where and in what precision models run: the device choice and the autocast dtype,
shared by training, sampling, the tasks and the server."""

from __future__ import annotations

import torch

from difforge.config import ConfigError


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend can run here."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when available, else MPS (Apple silicon), else the CPU; or the named
    device, refused in one line when its backend is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "mps" and not mps_available():
        raise ConfigError(f"device {name!r} requested but MPS (Apple Metal) is not available")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 / AMX (oneDNN's bf16 kernels). On a CPU without them bf16
    autocast is emulated and slower than fp32 (benchmarks/train_throughput.py records both)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 where `device` computes it natively (`native_bf16`), else fp32; any
    other value as given."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.float16
