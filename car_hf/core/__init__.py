"""What every stage uses and that uses no stage: the scoring options (:class:`~car_hf.core.config.CARConfig`),
the errors users catch, the one score cache, model loading and fingerprints (GGUF included), devices and dtypes,
data layouts and chat rendering, file and Hub I/O, the checks made before any model loads, chunks over
``accelerate`` processes, the CAR formula, length-sorted token-budget batches and the ``dataset.map`` transform base.
"""

from car_hf._lazy import lazy_exports

_MODULES = {
    "config": ("CARConfig", "DEFAULT_BASE_MODEL"),
    "errors": ("ConfigError", "GenerationError", "HubAuthError", "InputError", "ModelLoadError", "PublishError"),
    "formats": ("zoo_to_long",), "models": ("load_model",),
    "car": ("compatibility_adjusted_reward", "transform_rewards"),
}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
