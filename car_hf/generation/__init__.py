"""Responses from teachers: :class:`~car_hf.generation.teacher.TeacherConfig`, ``add_responses`` on the
transformers, vLLM and OpenAI-compatible engines, resumable generation, and checkable tasks with their reward.
"""

from car_hf._lazy import lazy_exports

_MODULES = {"teacher": ("TeacherConfig",), "generate": ("add_responses",)}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
