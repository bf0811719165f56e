"""The module paths car_hf had before it was organised by pipeline stage (0.x): they still import, with a warning.

``import car_hf.loss`` gives the module ``car_hf.scoring.loss`` itself (the same object, so patching either
name patches both) and a ``DeprecationWarning`` naming the new path. The one exception is ``car_hf.data``, whose
ranking-folder functions moved to :mod:`car_hf.publishing.folders`: its old path is a forwarding module over both.

Example:
    >>> import importlib, warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old = importlib.import_module("car_hf.stopping")
    >>> old is importlib.import_module("car_hf.ranking.stopping"), caught[0].category.__name__
    (True, 'DeprecationWarning')
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

_CORE = ("batching", "cache", "car", "config", "data", "devices", "distributed", "errors", "formats", "gguf",
         "inputs", "models", "transform")
#: old path -> new path
MOVED: dict[str, str] = {
    **{f"car_hf.{name}": f"car_hf.core.{name}" for name in _CORE},
    "car_hf.plot": "car_hf.plots.plot",
    "car_hf.labels": "car_hf.plots.labels",
    "car_hf.plot_examples": "car_hf.plots.examples",
    "car_hf.hub": "car_hf.publishing.hub",
    "car_hf.cards": "car_hf.publishing.cards",
    **{f"car_hf.{name}": f"car_hf.generation.{name}" for name in ("teacher", "generate", "resume", "tasks")},
    "car_hf.engines": "car_hf.generation.engines",
    "car_hf.loss": "car_hf.scoring.loss",
    "car_hf.reward": "car_hf.scoring.reward",
    "car_hf.stopping": "car_hf.ranking.stopping",
    "car_hf.adaptive": "car_hf.ranking.adaptive",
    "car_hf.trial": "car_hf.ranking.trial",
    "car_hf.selection": "car_hf.training.selection",
    "car_hf.callbacks": "car_hf.training.callbacks",
    "car_hf.integrations": "car_hf.training",
    "car_hf.integrations.trl": "car_hf.training.sft_trainer",
    "car_hf.evaluation_stats": "car_hf.evaluation.stats",
    **{f"car_hf.{name}": f"car_hf.evaluation.{name}"
       for name in ("pilot", "pilot_args", "pilot_data", "pilot_report", "pilot_sft")},
}
#: old modules that became packages of the same name (their names resolve from the package, see car_hf._lazy)
BECAME_PACKAGES = {"car_hf.scoring": "car_hf.scoring.scorer", "car_hf.ranking": "car_hf.ranking.leaderboard",
                   "car_hf.training": "car_hf.training.sft", "car_hf.evaluation": "car_hf.evaluation.student"}
_PACKAGES = ("car_hf.cards", "car_hf.engines")  # their submodules moved with them
_FORWARDING = {"car_hf.data": ("car_hf.core.data", "car_hf.publishing.folders")}


def new_path(old: str) -> str | None:
    """Where the module that was ``old`` lives now (None: not a moved path)."""
    if old in MOVED:
        return MOVED[old]
    package = next((p for p in _PACKAGES if old.startswith(p + ".")), None)
    return MOVED[package] + old[len(package):] if package else None


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if new_path(fullname) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = new_path(spec.name)
        warnings.warn(f"{spec.name} is deprecated: import {new} (car_hf's modules are grouped by pipeline stage "
                      "since 0.x; see docs/architecture.md)", DeprecationWarning, stacklevel=2)
        if spec.name in _FORWARDING:
            return _forwarding_module(spec.name, _FORWARDING[spec.name])
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system overwrites __spec__; exec_module puts it back
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        real = getattr(module.__spec__, "loader_state", None)
        if real is not None:
            module.__spec__ = real


def _forwarding_module(name: str, targets: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name, f"Deprecated: {' and '.join(targets)}.")

    def __getattr__(attr: str) -> Any:
        for target in targets:
            found = importlib.import_module(target)
            if hasattr(found, attr):
                return getattr(found, attr)
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())
