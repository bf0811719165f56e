"""Responses from teachers: :class:`~car_hf.generation.teacher.TeacherConfig`, ``add_responses`` on the
transformers, vLLM and OpenAI-compatible engines, resumable generation, and checkable tasks with their reward.
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "TeacherConfig": "car_hf.generation.teacher",
    "add_responses": "car_hf.generation.generate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
