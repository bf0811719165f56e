"""The ``vllm`` engine: ``vllm.LLM`` offline inference on GPUs (``pip install "car_hf[vllm]"``, vLLM >= 0.11).

vLLM is imported only when this engine is built. Prompts are rendered with the teacher's chat template by the
same code as the ``transformers`` engine (:func:`car_hf.generation.engines.base.prompt_ids`, on vLLM's tokenizer) and
passed as token ids, so both engines see the same tokens, stop at the same end-of-turn tokens and decode the
response the same way (the generated ids without the stop token, special tokens skipped). Each call hands vLLM
every prompt it gets (a whole chunk: :func:`car_hf.generation.generate.map_batch_size`), so vLLM's scheduler alone decides
how many sequences run at once. ``tensor_parallel_size`` spreads one engine over GPUs; for data parallelism, run
``vllm serve MODEL --data-parallel-size N`` and use the ``openai`` engine.

Engine options: ``gpu_memory_utilization``, ``max_model_len`` and ``enforce_eager`` are fields of
:class:`~car_hf.generation.teacher.TeacherConfig`; any other ``vllm.LLM`` option goes in ``engine_kwargs`` (a mapping), whose
names are checked against the installed vLLM's ``EngineArgs`` before the model loads. ``teacher_dtype`` reaches
vLLM under vLLM's names (``bf16`` is stored as ``bfloat16``: :data:`car_hf.generation.teacher.TEACHER_DTYPES`).

Prompts that do not fit: a prompt whose tokens plus ``max_new_tokens`` exceed the engine's ``max_model_len`` (the
model's context unless set lower) is an :class:`~car_hf.core.errors.InputError` naming its row, raised before any
prompt of the call is sent (vLLM itself would raise a bare ``ValueError`` for a prompt over the context, and cut
a response short of ``max_new_tokens`` at the context without saying why).

Sampling: ``SamplingParams`` with every field that decides the text set (temperature, top_p, top_k, min_p and the
penalties off; temperature 0 is greedy), seeded per request, so a response does not depend on which other
prompts share the batch; vLLM documents that reproducibility also needs the same hardware, vLLM version and
batch-invariant kernels.

GPU memory: :meth:`VLLMEngine.close` shuts vLLM's engine down and frees its memory;
:func:`car_hf.generation.generate.release_engines` does it for every engine of the process (before training or evaluating a
model in the process that generated).

On a GPU machine::

    pip install "car_hf[vllm]"
    python recipes/generate.py --dataset_name prompts.jsonl --teacher Qwen/Qwen2.5-7B-Instruct --engine vllm \\
        --tensor_parallel_size 2 --max_model_len 8192 --gpu_memory_utilization 0.85 --max_new_tokens 1024 \\
        --output_dir runs/gen-qwen7b

Example:
    >>> from car_hf.generation.teacher import TeacherConfig
    >>> config = TeacherConfig(teacher="org/model", engine="vllm", teacher_dtype="bf16", max_model_len=8192,
    ...                        engine_kwargs={"max_num_seqs": 512})
    >>> options = llm_options(config, "org/model")
    >>> options["dtype"], options["max_model_len"], options["max_num_seqs"], options["enforce_eager"]
    ('bfloat16', 8192, 512, False)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from car_hf.core.errors import ConfigError, GenerationError
from car_hf.generation.teacher import TeacherConfig
from car_hf.generation.engines.base import Generation, Messages, check_chat_template, check_context, prompt_ids, stop_token_ids


def llm_options(config: TeacherConfig, model: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``config`` (``model``: the id or folder vLLM loads)."""
    revision = config.teacher_revision if model == config.teacher else None  # a local folder has no revision
    return {"model": model, "revision": revision, "tokenizer_revision": revision, "dtype": config.teacher_dtype,
            "seed": config.generation_seed, "tensor_parallel_size": config.tensor_parallel_size,
            "trust_remote_code": config.teacher_trust_remote_code, "enforce_eager": config.enforce_eager,
            **config.vllm_options()}


def check_engine_kwargs(engine_args: type, options: Mapping[str, Any]) -> None:
    """Every name in ``options`` must be a field of vLLM's ``EngineArgs`` (the dataclass ``vllm.LLM`` passes its
    extra keyword arguments to), else a :class:`ConfigError` naming it and the closest real ones."""
    known = {f.name for f in dataclasses.fields(engine_args)}
    for name in sorted(set(options) - known):
        close = difflib.get_close_matches(name, sorted(known), n=3)
        raise ConfigError(f"engine_kwargs: {name!r} is not an option of the installed vLLM (a field of its "
                          f"EngineArgs){'; did you mean ' + ' or '.join(map(repr, close)) if close else ''}?")


class VLLMEngine:
    """Generate with ``vllm.LLM``; see the module docstring."""

    name: ClassVar[str] = "vllm"

    def __init__(self, config: TeacherConfig, model: str):
        try:
            import vllm
        except ImportError as error:
            raise ConfigError('engine vllm needs vLLM on a GPU machine: pip install "car_hf[vllm]" (or use engine '
                              "transformers)") from error
        check_engine_kwargs(vllm.EngineArgs, config.engine_kwargs or {})  # before the model loads
        self.config, self.teacher = config, str(config.teacher)
        self.llm = vllm.LLM(**llm_options(config, model))
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.tokenizer = self.llm.get_tokenizer()
        self.template = config.template_text()
        check_chat_template(self.tokenizer, self.template, self.teacher)
        self.stops = stop_token_ids(self.tokenizer, self.template, None)
        greedy = config.greedy
        # Every field that changes the text is set, whatever vLLM's defaults of the day.
        self.params = vllm.SamplingParams(
            n=1, temperature=config.temperature, top_p=1.0 if greedy else config.top_p, top_k=0, min_p=0.0,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=config.max_new_tokens,
            seed=config.generation_seed, stop_token_ids=self.stops,
        )

    def generate(self, prompts: Sequence[Messages], rows: Sequence[Any]) -> list[Generation]:
        if self.llm is None:
            raise GenerationError(f"the vLLM engine of {self.teacher!r} was closed (release_engines): build another")
        ids = [prompt_ids(self.tokenizer, p, self.template, row, self.teacher) for p, row in zip(prompts, rows)]
        check_context(ids, rows, self.config.max_new_tokens, self.max_model_len, self.teacher,
                      "vLLM's max_model_len")
        outputs = self.llm.generate([{"prompt_token_ids": i} for i in ids], self.params, use_tqdm=True)
        if len(outputs) != len(ids):
            raise GenerationError(f"vLLM returned {len(outputs)} outputs for {len(ids)} prompts")
        results = []
        for output, row in zip(outputs, rows):
            completion = output.outputs[0]
            reason = completion.finish_reason
            if reason not in ("stop", "length"):
                raise GenerationError(f"row {row}: vLLM ended the response with finish_reason {reason!r} "
                                      "(expected 'stop' or 'length')")
            generated = tuple(completion.token_ids)  # vLLM keeps the stop token (EOS or a stop_token_id) last
            text = self.tokenizer.decode(generated[:-1] if reason == "stop" else generated, skip_special_tokens=True)
            results.append(Generation(text, reason, len(generated), generated))
        return results

    def close(self) -> None:
        """Shut vLLM's engine down and free its GPU memory (its engine-core process, its distributed state, the
        CUDA cache). The engine cannot generate afterwards."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()  # vLLM >= 0.11 runs the model in an engine-core process that holds the GPU
        del llm, core
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # destroys the model-parallel groups, collects, empties the CUDA cache
