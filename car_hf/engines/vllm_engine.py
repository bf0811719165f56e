"""The ``vllm`` engine: ``vllm.LLM`` offline inference on GPUs (``pip install "car_hf[vllm]"``).

vLLM is imported only when this engine is built. Prompts are rendered with the teacher's chat template by the
same code as the ``transformers`` engine (:func:`car_hf.engines.base.prompt_ids`, on vLLM's tokenizer) and
passed as token ids, so both engines see the same tokens and stop at the same end-of-turn tokens. vLLM batches
continuously by itself; ``tensor_parallel_size`` spreads one engine over GPUs. For data parallelism, run
``vllm serve MODEL --data-parallel-size N`` and use the ``openai`` engine.

Sampling: ``SamplingParams(temperature, top_p, max_tokens, seed)`` (temperature 0 is greedy), seeded per
request, so a response does not depend on which other prompts share the batch; vLLM documents that
reproducibility also needs the same hardware, vLLM version and batch-invariant kernels.

On a GPU machine::

    pip install "car_hf[vllm]"
    python recipes/generate.py --dataset_name prompts.jsonl --teacher Qwen/Qwen2.5-7B-Instruct --engine vllm \\
        --tensor_parallel_size 2 --max_new_tokens 1024 --output_dir runs/gen-qwen7b

Example:
    >>> from car_hf.teacher import TeacherConfig
    >>> options = llm_options(TeacherConfig(teacher="org/model", engine="vllm", tensor_parallel_size=2), "org/model")
    >>> options["model"], options["tensor_parallel_size"], options["seed"], options["dtype"]
    ('org/model', 2, 0, 'auto')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import ConfigError, GenerationError
from ..teacher import TeacherConfig
from .base import Generation, Messages, check_chat_template, prompt_ids, stop_token_ids


def llm_options(config: TeacherConfig, model: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``config`` (``model``: the id or folder vLLM loads)."""
    revision = config.teacher_revision if model == config.teacher else None  # a local folder has no revision
    return {"model": model, "revision": revision, "tokenizer_revision": revision, "dtype": config.teacher_dtype,
            "seed": config.generation_seed, "tensor_parallel_size": config.tensor_parallel_size,
            "trust_remote_code": config.teacher_trust_remote_code}


class VLLMEngine:
    """Generate with ``vllm.LLM``; see the module docstring."""

    name: ClassVar[str] = "vllm"

    def __init__(self, config: TeacherConfig, model: str):
        try:
            import vllm
        except ImportError as error:
            raise ConfigError('engine vllm needs vLLM on a GPU machine: pip install "car_hf[vllm]" (or use engine '
                              "transformers)") from error
        self.config, self.teacher = config, str(config.teacher)
        self.llm = vllm.LLM(**llm_options(config, model))
        self.tokenizer = self.llm.get_tokenizer()
        self.template = config.template_text()
        check_chat_template(self.tokenizer, self.template, self.teacher)
        self.stops = stop_token_ids(self.tokenizer, self.template, None)
        greedy = config.greedy
        self.params = vllm.SamplingParams(
            n=1, temperature=config.temperature, top_p=1.0 if greedy else config.top_p,
            max_tokens=config.max_new_tokens, seed=config.generation_seed, stop_token_ids=self.stops,
        )

    def generate(self, prompts: Sequence[Messages], rows: Sequence[Any]) -> list[Generation]:
        inputs = [{"prompt_token_ids": prompt_ids(self.tokenizer, p, self.template, row, self.teacher)}
                  for p, row in zip(prompts, rows)]
        outputs = self.llm.generate(inputs, self.params, use_tqdm=False)
        if len(outputs) != len(inputs):
            raise GenerationError(f"vLLM returned {len(outputs)} outputs for {len(inputs)} prompts")
        results = []
        for output, row in zip(outputs, rows):
            completion = output.outputs[0]
            if completion.finish_reason not in ("stop", "length"):
                raise GenerationError(f"row {row}: vLLM ended the response with finish_reason "
                                      f"{completion.finish_reason!r} (expected 'stop' or 'length')")
            ids = tuple(completion.token_ids)
            results.append(Generation(completion.text, completion.finish_reason, len(ids), ids))
        return results
