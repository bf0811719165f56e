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

from typing import TYPE_CHECKING

from car_hf import _moved  # noqa: F401  (the pre-0.x module paths keep importing, with a DeprecationWarning)
from car_hf._lazy import lazy_exports
from car_hf._version import __version__

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports each name on first use
    from car_hf.core.car import compatibility_adjusted_reward, transform_rewards
    from car_hf.core.config import DEFAULT_BASE_MODEL, CARConfig
    from car_hf.core.errors import ConfigError, GenerationError, HubAuthError, InputError, ModelLoadError, PublishError
    from car_hf.core.formats import zoo_to_long
    from car_hf.core.models import load_model
    from car_hf.evaluation.student import evaluate_student
    from car_hf.generation.generate import add_responses
    from car_hf.generation.teacher import TeacherConfig
    from car_hf.ranking.adaptive import rank_adaptive
    from car_hf.ranking.leaderboard import BetaFit, fit_beta, rank_generators, spearman_table
    from car_hf.ranking.matrix import rank_matrix
    from car_hf.ranking.results import AdaptiveResult
    from car_hf.ranking.trial import rank_teachers
    from car_hf.scoring.loss import add_base_loss
    from car_hf.scoring.reward import DEFAULT_REWARD_MODEL, add_reward
    from car_hf.scoring.scorer import add_car
    from car_hf.training.selection import CARFilter, select_generator

# Each module (under car_hf) → the public names it defines (the TYPE_CHECKING block above, as data; a test checks
# they agree). The layout by pipeline stage: docs/architecture.md.
_SUBMODULES = {
    "core.car": ("compatibility_adjusted_reward", "transform_rewards"),
    "core.config": ("DEFAULT_BASE_MODEL", "CARConfig"),
    "core.errors": ("ConfigError", "GenerationError", "HubAuthError", "InputError", "ModelLoadError", "PublishError"),
    "core.formats": ("zoo_to_long",),
    "core.models": ("load_model",),
    "evaluation.student": ("evaluate_student",),
    "generation.generate": ("add_responses",),
    "generation.teacher": ("TeacherConfig",),
    "ranking.adaptive": ("rank_adaptive",),
    "ranking.leaderboard": ("BetaFit", "fit_beta", "rank_generators", "spearman_table"),
    "ranking.matrix": ("rank_matrix",),
    "ranking.results": ("AdaptiveResult",),
    "ranking.trial": ("rank_teachers",),
    "scoring.loss": ("add_base_loss",),
    "scoring.reward": ("DEFAULT_REWARD_MODEL", "add_reward"),
    "scoring.scorer": ("add_car",),
    "training.selection": ("CARFilter", "select_generator"),
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
    "rank_matrix",
    "rank_teachers",
    "select_generator",
    "spearman_table",
    "transform_rewards",
    "zoo_to_long",
]


__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULES)
