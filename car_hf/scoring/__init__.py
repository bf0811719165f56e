"""Per-response scores as ``dataset.map`` transforms: the base model's loss (loss, IFD, PPL, rank), rewards
(reward models or functions) and both together with CAR (``add_car``).
"""

from car_hf._lazy import lazy_exports

_MODULES = {
    "loss": ("add_base_loss",), "reward": ("add_reward", "DEFAULT_REWARD_MODEL"),
    "scorer": ("add_car", "CARScorer"),
}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, legacy="car_hf.scoring.scorer")
