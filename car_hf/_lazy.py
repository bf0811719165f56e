"""Names a package imports on first use (PEP 562), so that ``import car_hf`` loads no torch or datasets.

Example:
    >>> import sys, types
    >>> pkg = types.ModuleType("demo_pkg")
    >>> sys.modules["demo_pkg"] = pkg
    >>> pkg.__getattr__, pkg.__dir__ = lazy_exports("demo_pkg", {"math": ("sqrt",)}, relative=False)
    >>> pkg.sqrt(9.0), "sqrt" in dir(pkg)
    (3.0, True)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]], legacy: str | None = None, *,
                 relative: bool = True) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``modules`` maps each module (under ``package`` when
    ``relative``) to the public names it defines.

    ``legacy``: the module that used to live at this package's path (``car_hf.ranking`` was a module before the
    stages became packages); its other names still resolve, with a ``DeprecationWarning`` naming the new home.
    """
    exports = {name: f"{package}.{module}" if relative else module for module, names in modules.items()
               for name in names}

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")  # a submodule (``from package import submodule``)
        elif legacy is not None and not name.startswith("__") and hasattr(module := importlib.import_module(legacy),
                                                                            name):
            warnings.warn(f"{package}.{name} is deprecated: import it from {legacy}", DeprecationWarning,
                          stacklevel=2)
            return getattr(module, name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
