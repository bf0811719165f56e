"""Generation engines behind :func:`car_hf.generation.generate.add_responses`, one module each, one small interface.

* :mod:`~car_hf.generation.engines.transformers_engine`: batched ``model.generate``, CPU or GPU (the default);
* :mod:`~car_hf.generation.engines.vllm_engine`: ``vllm.LLM`` on GPUs (``pip install "car_hf[vllm]"``);
* :mod:`~car_hf.generation.engines.openai_engine`: any OpenAI-compatible chat endpoint.

Each has ``name`` and ``generate(prompts, rows) -> list[Generation]`` (:class:`~car_hf.generation.engines.base.Engine`).
Modules are imported when their engine is built, so vLLM and the HTTP client load only when used.

Example:
    >>> from car_hf.generation.engines import Generation
    >>> Generation("Paris.", "stop", 3)
    Generation(text='Paris.', finish_reason='stop', tokens=3, token_ids=None)
"""

from car_hf.generation.engines.base import Engine, Generation, Messages

__all__ = ["Engine", "Generation", "Messages"]
