"""Measuring tuned students and checking a choice before paying for it: ``evaluate_student`` (reward models,
``evaluate`` metrics, judges), paired statistics, and pilot distillations with their report.
"""

from car_hf._lazy import lazy_exports

_MODULES = {"student": ("evaluate_student",), "arguments": ("EvaluationArguments",)}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, legacy="car_hf.evaluation.student")
