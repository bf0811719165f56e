"""Selecting examples and tuning students: ``CARFilter`` and the selection modes, the Trainer callback, the SFT
recipe's steps, and TRL's ``SFTTrainer`` whose model card carries car_hf's section.
"""

from car_hf._lazy import lazy_exports

_MODULES = {"selection": ("CARFilter", "select_generator")}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, legacy="car_hf.training.sft")
