"""Per-response scores as ``dataset.map`` transforms: the base model's loss (loss, IFD, PPL, rank), rewards
(reward models or functions) and both together with CAR (``add_car``).
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "add_base_loss": "car_hf.scoring.loss",
    "add_reward": "car_hf.scoring.reward",
    "DEFAULT_REWARD_MODEL": "car_hf.scoring.reward",
    "add_car": "car_hf.scoring.scorer",
    "CARScorer": "car_hf.scoring.scorer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, legacy="car_hf.scoring.scorer")
