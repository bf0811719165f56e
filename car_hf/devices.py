"""The device and dtype arguments of :func:`car_hf.models.load_model`: which device a model runs on, and which
dtype it is loaded in there (``"auto"``: float32 on CPU, bfloat16 or float16 on CUDA).

Example:
    >>> from car_hf.devices import resolve_device, resolve_dtype
    >>> device = resolve_device("cpu")
    >>> device, resolve_dtype("auto", device), resolve_dtype("bf16", device)
    (device(type='cpu'), torch.float32, torch.bfloat16)
"""

from __future__ import annotations

import torch

__all__ = ["DeviceLike", "default_dtype", "resolve_device", "resolve_dtype"]

DeviceLike = str | int | torch.device | None

DTYPE_ALIASES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: DeviceLike = None) -> torch.device:
    """Normalize a device argument.

    ``None`` -> ``cuda:0`` when CUDA is available, else ``cpu``; an int is a process rank -> ``cuda:{rank %
    device_count}`` (so ``Dataset.map(..., with_rank=True)`` workers spread over the GPUs), or ``cpu`` without
    CUDA; strings and ``torch.device`` pass through, with a bare ``"cuda"`` made explicit as ``cuda:0``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{device % torch.cuda.device_count()}")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        # "cuda" and "cuda:0" must share a memo entry
        return torch.device("cuda:0")
    return device


def default_dtype(device: DeviceLike = None) -> torch.dtype:
    """The dtype ``dtype="auto"`` picks for ``device``.

    float32 on CPU (bfloat16 is slower there without AMX, and float32 keeps losses exact), bfloat16 on CUDA
    devices that support it (compute capability >= 8), float16 on older CUDA devices, float32 elsewhere.

    Example:
        >>> default_dtype("cpu")
        torch.float32
    """
    device = resolve_device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The ``torch.dtype`` to load with on ``device`` for a dtype argument: ``"auto"`` (:func:`default_dtype`), a
    name or alias in :data:`DTYPE_ALIASES` (e.g. ``"bf16"``), or a ``torch.dtype`` (as is).

    Example:
        >>> resolve_dtype("fp16", torch.device("cpu"))
        torch.float16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return default_dtype(device)
    if dtype in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}: pass 'auto', a torch.dtype, or one of {sorted(DTYPE_ALIASES)}")
