"""What every stage uses and that uses no stage: the scoring options (:class:`~car_hf.core.config.CARConfig`),
the errors users catch, the one score cache, model loading and fingerprints (GGUF included), devices and dtypes,
data layouts and chat rendering, file and Hub I/O, the checks made before any model loads, chunks over
``accelerate`` processes, the CAR formula, length-sorted token-budget batches and the ``dataset.map`` transform base.
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "CARConfig": "car_hf.core.config",
    "DEFAULT_BASE_MODEL": "car_hf.core.config",
    "ConfigError": "car_hf.core.errors",
    "GenerationError": "car_hf.core.errors",
    "HubAuthError": "car_hf.core.errors",
    "InputError": "car_hf.core.errors",
    "ModelLoadError": "car_hf.core.errors",
    "PublishError": "car_hf.core.errors",
    "zoo_to_long": "car_hf.core.formats",
    "load_model": "car_hf.core.models",
    "compatibility_adjusted_reward": "car_hf.core.car",
    "transform_rewards": "car_hf.core.car",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
