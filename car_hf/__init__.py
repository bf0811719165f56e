"""car_hf: the Compatibility-Adjusted Reward (CAR) for Hugging Face datasets, transformers and TRL.

CAR = r / (1 + beta * L) ranks response generators (teachers) for a student base model by the mean
reward r of their responses, discounted by the responses' mean loss L under the base model
(Xu et al., 2024, arXiv 2411.07133).

The names below are imported on first use (``import car_hf`` loads no torch, transformers or datasets, so
``car-hf --help`` is instant); ``from car_hf import X`` works for each of them.

Example:
    >>> from car_hf import CARConfig, add_car, rank_generators
    >>> scorer = add_car(config=CARConfig(reward_column="judge_preference", beta=1.0))
    >>> rank_generators({"generator": ["a", "b"], "reward": [0.8, 0.9], "base_loss": [1.0, 2.0]},
    ...                 n_bootstrap=0)[["generator", "rank"]].values.tolist()
    [['a', 1], ['b', 2]]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports each name on first use
    from .adaptive import AdaptiveResult, rank_adaptive
    from .car import compatibility_adjusted_reward, transform_rewards
    from .config import DEFAULT_BASE_MODEL, CARConfig
    from .errors import ConfigError, GenerationError, HubAuthError, InputError, ModelLoadError, PublishError
    from .evaluation import evaluate_student
    from .formats import zoo_to_long
    from .generate import add_responses
    from .loss import add_base_loss
    from .models import load_model
    from .ranking import BetaFit, fit_beta, rank_generators, spearman_table
    from .reward import DEFAULT_REWARD_MODEL, add_reward
    from .scoring import add_car
    from .selection import CARFilter, select_generator
    from .teacher import TeacherConfig
    from .trial import rank_teachers

# Each submodule → the public names it defines (the TYPE_CHECKING block above, as data; a test checks they agree).
_SUBMODULES = {
    "adaptive": ("AdaptiveResult", "rank_adaptive"),
    "car": ("compatibility_adjusted_reward", "transform_rewards"),
    "config": ("DEFAULT_BASE_MODEL", "CARConfig"),
    "errors": ("ConfigError", "GenerationError", "HubAuthError", "InputError", "ModelLoadError", "PublishError"),
    "evaluation": ("evaluate_student",),
    "formats": ("zoo_to_long",),
    "generate": ("add_responses",),
    "loss": ("add_base_loss",),
    "models": ("load_model",),
    "ranking": ("BetaFit", "fit_beta", "rank_generators", "spearman_table"),
    "reward": ("DEFAULT_REWARD_MODEL", "add_reward"),
    "scoring": ("add_car",),
    "selection": ("CARFilter", "select_generator"),
    "teacher": ("TeacherConfig",),
    "trial": ("rank_teachers",),
}
_EXPORTS = {name: module for module, names in _SUBMODULES.items() for name in names}

__all__ = [
    "AdaptiveResult",
    "BetaFit",
    "CARConfig",
    "CARFilter",
    "ConfigError",
    "GenerationError",
    "DEFAULT_BASE_MODEL",
    "DEFAULT_REWARD_MODEL",
    "HubAuthError",
    "InputError",
    "ModelLoadError",
    "PublishError",
    "TeacherConfig",
    "__version__",
    "add_base_loss",
    "add_car",
    "add_responses",
    "add_reward",
    "compatibility_adjusted_reward",
    "evaluate_student",
    "fit_beta",
    "load_model",
    "rank_adaptive",
    "rank_generators",
    "rank_teachers",
    "select_generator",
    "spearman_table",
    "transform_rewards",
    "zoo_to_long",
]


def __getattr__(name: str) -> Any:
    """``car_hf.X``: imports X's submodule on first use and keeps X as a module attribute (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'car_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
