"""Measuring tuned students and checking a choice before paying for it: ``evaluate_student`` (reward models,
``evaluate`` metrics, judges), paired statistics, and pilot distillations with their report.
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "evaluate_student": "car_hf.evaluation.student",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, legacy="car_hf.evaluation.student")
