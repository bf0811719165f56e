"""car_hf: the Compatibility-Adjusted Reward (CAR) for Hugging Face datasets, transformers and TRL.

CAR = r / (1 + beta * L) ranks response generators (teachers) for a student base model by the mean
reward r of their responses, discounted by the responses' mean loss L under the base model
(Xu et al., 2024, arXiv 2411.07133).

Example:
    >>> from car_hf import CARConfig, add_car, rank_generators
    >>> scorer = add_car(config=CARConfig(reward_column="judge_preference", beta=1.0))
    >>> rank_generators({"generator": ["a", "b"], "reward": [0.8, 0.9], "base_loss": [1.0, 2.0]},
    ...                 n_bootstrap=0)[["generator", "rank"]].values.tolist()
    [['a', 1], ['b', 2]]
"""

from ._version import __version__
from .adaptive import AdaptiveResult, rank_adaptive
from .car import compatibility_adjusted_reward, transform_rewards
from .config import DEFAULT_BASE_MODEL, CARConfig
from .errors import ConfigError, GenerationError, HubAuthError, InputError, ModelLoadError, PublishError
from .generate import add_responses
from .formats import zoo_to_long
from .loss import add_base_loss
from .models import load_model
from .ranking import BetaFit, fit_beta, rank_generators, spearman_table
from .reward import DEFAULT_REWARD_MODEL, add_reward
from .scoring import add_car
from .selection import CARFilter, select_generator
from .teacher import TeacherConfig
from .trial import rank_teachers

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
