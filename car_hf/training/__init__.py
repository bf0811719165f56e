"""Selecting examples and tuning students: ``CARFilter`` and the selection modes, the Trainer callback, the SFT
recipe's steps, and TRL's ``SFTTrainer`` whose model card carries car_hf's section.
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "CARFilter": "car_hf.training.selection",
    "select_generator": "car_hf.training.selection",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, legacy="car_hf.training.sft")
