"""A strict stand-in for the ``vllm`` package, for tests on machines without a GPU.

It mirrors the API of the vLLM versions car_hf's ``vllm`` extra pins (>= 0.11, V1 engine), read from vLLM's source
(``vllm/entrypoints/llm.py`` ``LLM.__init__``/``generate``, ``vllm/sampling_params.py``, ``vllm/outputs.py``,
``vllm/engine/arg_utils.py``, ``vllm/v1/core/sched/utils.py``'s stop check):

* ``LLM(model, *, <its keyword-only parameters>, **kwargs)`` passes ``kwargs`` to ``EngineArgs``, a dataclass: an
  unknown keyword is a ``TypeError``, as in vLLM; ``dtype`` must be one of vLLM's names (``"bf16"`` is
  ``ValueError: Unknown dtype``); a ``max_model_len`` above the model's context is a ``ValueError``;
* ``SamplingParams`` takes keyword arguments of its real fields only (a ``TypeError`` otherwise) and checks their
  ranges as vLLM's ``_verify_args`` does;
* ``LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
  tokenization_kwargs=None)`` raises vLLM's ``ValueError`` for a prompt longer than ``max_model_len`` ("The decoder
  prompt (length N) is longer than the maximum model length of M. ...") before generating anything, and ends each
  sequence as vLLM's scheduler does: on a ``stop_token_ids`` token (``finish_reason "stop"``, ``stop_reason`` the
  token id) or the tokenizer's EOS (``"stop"``, ``stop_reason None``), the stop token kept last in ``token_ids`` and
  left out of ``text`` when it is a special token; at ``max_tokens`` or at ``max_model_len`` (``"length"``);
* ``llm.llm_engine.model_config.max_model_len``, ``llm.llm_engine.engine_core.shutdown()`` and
  ``vllm.distributed.parallel_state.cleanup_dist_env_and_memory()`` record that memory was released.

The "model" is :attr:`DoubleLLM.respond`: a function of the prompt's token ids giving the tokens it would write
(default: :func:`words`, then ``<|end|>``, then the prompt again), which the double cuts as
vLLM would. :func:`install` puts the package in ``sys.modules``.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")  # vllm ModelDType
END = 6  # the tiny tokenizer's <|end|>


@dataclass
class EngineArgs:
    """vLLM's ``EngineArgs`` (the fields car_hf's tests use, and common ones users pass in engine_kwargs)."""

    model: str = "facebook/opt-125m"
    runner: str = "auto"
    convert: str = "auto"
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    allowed_local_media_path: str = ""
    allowed_media_domains: list[str] | None = None
    download_dir: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    pipeline_parallel_size: int = 1
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    swap_space: float = 4
    cpu_offload_gb: float = 0
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_logprobs: int = 20
    disable_log_stats: bool = False
    revision: str | None = None
    code_revision: str | None = None
    hf_token: bool | str | None = None
    hf_overrides: Any = None
    tokenizer_revision: str | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    enable_return_routed_experts: bool = False
    disable_custom_all_reduce: bool = False
    mm_processor_kwargs: dict[str, Any] | None = None
    pooler_config: Any = None
    structured_outputs_config: Any = None
    profiler_config: Any = None
    attention_config: Any = None
    compilation_config: Any = None
    logits_processors: list[Any] | None = None
    enable_chunked_prefill: bool | None = None
    generation_config: str = "auto"
    enable_lora: bool = False
    max_lora_rank: int = 16
    worker_cls: str = "auto"


@dataclass(kw_only=True)
class SamplingParams:
    """vLLM's ``SamplingParams`` (a msgspec Struct: unknown keywords are refused), with its defaults and checks."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None

    def __post_init__(self) -> None:
        if not -2.0 <= self.presence_penalty <= 2.0 or not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1 or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop
        self.stop_token_ids = list(dict.fromkeys(self.stop_token_ids or []))
        if self.temperature < 1e-5 and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class ModelConfig:
    max_model_len: int


@dataclass
class EngineCore:
    shut_down: bool = False

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class LLMEngine:
    model_config: ModelConfig
    engine_core: EngineCore = field(default_factory=EngineCore)


def words(prompt_ids: list[int]) -> list[int]:
    """The default answer's words: the prompt's last 4 ordinary (not special) tokens, reversed."""
    return [t for t in prompt_ids if t not in DoubleLLM.tokenizer.all_special_ids][-4:][::-1]


def default_respond(prompt_ids: list[int]) -> list[int]:
    return words(prompt_ids) + [END] + prompt_ids


class DoubleLLM:
    """``vllm.LLM``; class attributes set by tests: the tokenizer, the model's context and its answers."""

    tokenizer: Any = None
    context = 2048  # the model's max_position_embeddings: vLLM's derived max_model_len
    respond: Callable[[list[int]], list[int]] = staticmethod(default_respond)
    finish_reason: str | None = None  # forces one (e.g. "abort")
    instances: list[DoubleLLM] = []

    def __init__(self, model: str, *, runner: str = "auto", convert: str = "auto", tokenizer: str | None = None,
                 tokenizer_mode: str = "auto", skip_tokenizer_init: bool = False, trust_remote_code: bool = False,
                 allowed_local_media_path: str = "", allowed_media_domains: list[str] | None = None,
                 tensor_parallel_size: int = 1, dtype: str = "auto", quantization: str | None = None,
                 revision: str | None = None, tokenizer_revision: str | None = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.9, swap_space: float = 4, cpu_offload_gb: float = 0,
                 enforce_eager: bool = False, enable_return_routed_experts: bool = False,
                 disable_custom_all_reduce: bool = False, hf_token: bool | str | None = None, hf_overrides: Any = None,
                 mm_processor_kwargs: dict[str, Any] | None = None, pooler_config: Any = None,
                 structured_outputs_config: Any = None, profiler_config: Any = None, attention_config: Any = None,
                 kv_cache_memory_bytes: int | None = None, compilation_config: Any = None,
                 logits_processors: list[Any] | None = None, **kwargs: Any) -> None:
        explicit = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        self.kwargs = {k: v for k, v in explicit.items() if v != _DEFAULTS[k]} | kwargs  # what car_hf chose
        self.engine_args = EngineArgs(**explicit, **kwargs)  # TypeError on an unknown keyword, as in vLLM
        if dtype not in VLLM_DTYPES:
            raise ValueError(f"Unknown dtype: {dtype!r}")
        max_model_len = self.engine_args.max_model_len or DoubleLLM.context
        if max_model_len > DoubleLLM.context:
            raise ValueError(f"User-specified max_model_len ({max_model_len}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={DoubleLLM.context} in model's config.json).")
        self.llm_engine = LLMEngine(ModelConfig(max_model_len))
        self.calls: list[dict[str, Any]] = []
        DoubleLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return DoubleLLM.tokenizer

    def generate(self, prompts: Any, sampling_params: SamplingParams | None = None, *, use_tqdm: bool = True,
                 lora_request: Any = None, priority: list[int] | None = None,
                 tokenization_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        params = sampling_params or SamplingParams()
        prompts = prompts if isinstance(prompts, (list, tuple)) else [prompts]
        ids = [list(p["prompt_token_ids"]) if isinstance(p, dict) else DoubleLLM.tokenizer.encode(p) for p in prompts]
        limit = self.llm_engine.model_config.max_model_len
        for prompt_ids in ids:  # the processor validates every request before the engine runs any
            if len(prompt_ids) > limit:
                raise ValueError(f"The decoder prompt (length {len(prompt_ids)}) is longer than the maximum model "
                                 f"length of {limit}. Make sure that `max_model_len` is no smaller than the number of "
                                 "text tokens.")
        self.calls.append({"prompts": prompts, "params": params, "use_tqdm": use_tqdm})
        return [self._run(str(k), prompt_ids, params, limit) for k, prompt_ids in enumerate(ids)]

    def _run(self, request_id: str, prompt_ids: list[int], params: SamplingParams, limit: int) -> RequestOutput:
        tokenizer, out, reason, stop_reason = DoubleLLM.tokenizer, [], "length", None
        stops = set(params.stop_token_ids)
        for token in DoubleLLM.respond(prompt_ids):
            out.append(token)
            if token in stops:
                reason, stop_reason = "stop", token
                break
            if token == tokenizer.eos_token_id and not params.ignore_eos:
                reason = "stop"
                break
            if len(out) >= (params.max_tokens or limit) or len(prompt_ids) + len(out) >= limit:
                break
        special = set(tokenizer.all_special_ids)
        shown = out[:-1] if reason == "stop" and out[-1] in special else out
        text = tokenizer.decode(shown, skip_special_tokens=params.skip_special_tokens)
        completion = CompletionOutput(0, text, out, None, None, DoubleLLM.finish_reason or reason, stop_reason)
        return RequestOutput(request_id, None, prompt_ids, None, [completion], True)


_DEFAULTS = {name: p.default for name, p in __import__("inspect").signature(DoubleLLM.__init__).parameters.items()
             if p.default is not p.empty}
_DEFAULTS["model"] = object()  # always reported


def install(monkeypatch: Any, tokenizer: Any) -> types.ModuleType:
    """Put the double in ``sys.modules`` as ``vllm`` (``importlib.util.find_spec("vllm")`` sees it installed)."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams, module.EngineArgs = DoubleLLM, SamplingParams, EngineArgs
    module.cleanups = []
    distributed = types.ModuleType("vllm.distributed")
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")
    parallel_state.cleanup_dist_env_and_memory = lambda shutdown_ray=False: module.cleanups.append(shutdown_ray)
    distributed.parallel_state = parallel_state
    module.distributed = distributed
    for name, value in (("vllm", module), ("vllm.distributed", distributed),
                        ("vllm.distributed.parallel_state", parallel_state)):
        monkeypatch.setitem(sys.modules, name, value)
    DoubleLLM.tokenizer, DoubleLLM.context, DoubleLLM.finish_reason = tokenizer, 2048, None
    DoubleLLM.respond, DoubleLLM.instances = staticmethod(default_respond), []
    assert dataclasses.is_dataclass(EngineArgs)
    return module
