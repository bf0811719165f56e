"""The device and dtype arguments of :func:`car_hf.core.models.load_model`: which device a model runs on, and which
dtype it is loaded in there.

``dtype="auto"`` is float32 on CPU, bfloat16 on GPUs that have it (compute capability >= 8: Ampere and later), and
on older GPUs float16, except for model families whose activations overflow float16's range (max 65504), which get
float32 there (:func:`fp16_unstable`; one log line says so).

Example:
    >>> from car_hf.core.devices import resolve_device, resolve_dtype
    >>> device = resolve_device("cpu")
    >>> device, resolve_dtype("auto", device), resolve_dtype("bf16", device)
    (device(type='cpu'), torch.float32, torch.bfloat16)
    >>> fp16_unstable("gemma3_text"), fp16_unstable("glm4"), fp16_unstable("qwen2")
    (True, True, False)
"""

from __future__ import annotations

import logging

import torch

__all__ = ["DeviceLike", "default_dtype", "dtype_name", "fp16_unstable", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

FP16_UNSTABLE_MODEL_TYPES = frozenset({"glm4", "plamo2"})
"""Model types besides the Gemma family that vLLM refuses to run in float16 ("Numerical instability. Please use
bfloat16 or float32 instead.": ``_FLOAT16_NOT_SUPPORTED_MODELS`` in vLLM's ``config/model.py``, which lists gemma2,
gemma3, gemma3_text, plamo2 and glm4)."""

# (model type, compute capability) pairs already logged: describing a model and loading it resolve the dtype twice.
_LOGGED: set[tuple[str, tuple[int, int]]] = set()

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


def fp16_unstable(model_type: str | None) -> bool:
    """Whether a model type is known to overflow float16: the Gemma family (every Gemma, Gemma-2/3/3n/4 and their
    derivatives multiply the embeddings by sqrt(hidden_size) and carry large post-norm weights, so activations pass
    65504: transformers issue #36822 and PR #37226 for Gemma-3, PR #46277 for Gemma-4; vLLM refuses gemma2 and
    gemma3 in float16) and :data:`FP16_UNSTABLE_MODEL_TYPES`.

    Example:
        >>> fp16_unstable("gemma2"), fp16_unstable("llama"), fp16_unstable(None)
        (True, False, False)
    """
    return model_type is not None and ("gemma" in model_type or model_type in FP16_UNSTABLE_MODEL_TYPES)


def default_dtype(device: DeviceLike = None, model_type: str | None = None) -> torch.dtype:
    """The dtype ``dtype="auto"`` picks for ``device`` (and the model's ``config.model_type``, where it matters).

    float32 on CPU (bfloat16 is slower there without AMX, and float32 keeps losses exact), bfloat16 on CUDA
    devices that support it (compute capability >= 8), float16 on older CUDA devices unless the model family is
    :func:`fp16_unstable` (then float32, logged once), float32 elsewhere.

    Example:
        >>> default_dtype("cpu")
        torch.float32
    """
    device = resolve_device(device)
    if device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        if capability[0] >= 8:
            return torch.bfloat16
        if fp16_unstable(model_type):
            if (model_type, capability) not in _LOGGED:
                _LOGGED.add((model_type, capability))
                logger.warning(
                    "dtype='auto': %s models overflow float16 (NaN losses) and this GPU (compute capability %d.%d) has "
                    "no bfloat16, so the model is loaded in float32 (twice the memory of float16)",
                    model_type, *capability)
            return torch.float32
        return torch.float16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, model_type: str | None = None) -> torch.dtype:
    """The ``torch.dtype`` to load with on ``device`` for a dtype argument: ``"auto"`` (:func:`default_dtype`, which
    also looks at ``model_type``), a name or alias in :data:`DTYPE_ALIASES` (e.g. ``"bf16"``), or a ``torch.dtype``
    (as is).

    Example:
        >>> resolve_dtype("fp16", torch.device("cpu"))
        torch.float16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return default_dtype(device, model_type)
    if dtype in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}: pass 'auto', a torch.dtype, or one of {sorted(DTYPE_ALIASES)}")



def dtype_name(dtype: torch.dtype) -> str:
    """The short name records use (``"bfloat16"``, as ``CARConfig.score_dtype`` writes it).

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")
