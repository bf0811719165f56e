"""``TeacherConfig``: the one declaration of car_hf's generation options.

A *teacher* is what writes a response column: a model (Hub id, folder, ``.gguf`` file, a loaded
``(model, tokenizer)`` pair, or the name a server serves it under) plus a system prompt and sampling
parameters, so "the same model with another system prompt" is another candidate teacher. Everything
that decides how responses are generated lives here, once: :func:`car_hf.generation.generate.add_responses`
takes it (its keyword arguments are the same fields), ``recipes/generate.py`` parses it with
``TrlParser`` and the generated dataset records it (:meth:`TeacherConfig.record`).

Field names do not collide with :class:`~car_hf.core.config.CARConfig`'s nor with TRL's ``SFTConfig`` /
``ModelConfig``'s, so one parser can hold them all: the generated column is ``generation_column``
(``CARConfig.response_column`` names the column a scorer reads), the seed is ``generation_seed``
(TRL owns ``seed``), the batch budget ``generation_batch_tokens``.

The token of an OpenAI-compatible endpoint is never a field: ``api_key_env`` holds the NAME of the
environment variable that holds it, read when requests are sent, so configurations, records,
pickles and logs can be shared.

Example:
    >>> config = TeacherConfig(teacher="HuggingFaceTB/SmolLM2-135M-Instruct", max_new_tokens=64)
    >>> config.greedy, config.label
    (True, 'HuggingFaceTB/SmolLM2-135M-Instruct')
    >>> TeacherConfig(teacher="m", system_prompt="Be brief.").label
    'm [system 1947d731]'
    >>> TeacherConfig(teacher="m", temperature=-1)
    Traceback (most recent call last):
    ...
    car_hf.core.errors.ConfigError: temperature must be >= 0 (0: greedy), got -1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from car_hf._version import __version__
from car_hf.core.errors import ConfigError

ENGINES = ("auto", "transformers", "vllm", "openai")

# Fields that change nothing in the generated columns: left out of cache keys, so a rerun with more
# concurrency or patience (or, for vLLM, memory: its continuous batching composes batches by timing anyway)
# still finds what an earlier run generated.
_NOT_IN_KEY = ("max_concurrency", "max_retries", "retry_backoff", "request_timeout", "api_key_env",
               "gpu_memory_utilization", "max_model_len", "enforce_eager")

TEACHER_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                  "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
"""``teacher_dtype`` names and aliases, and the name each one is stored as: torch's, which are also vLLM's
(``vllm.LLM(dtype=...)`` accepts auto, half, float16, bfloat16, float and float32, not bf16/fp16/fp32)."""

VLLM_OPTIONS = {"model": "teacher", "revision": "teacher_revision", "tokenizer_revision": "teacher_revision",
                "dtype": "teacher_dtype", "seed": "generation_seed", "tensor_parallel_size": "tensor_parallel_size",
                "trust_remote_code": "teacher_trust_remote_code", "gpu_memory_utilization": "gpu_memory_utilization",
                "max_model_len": "max_model_len", "enforce_eager": "enforce_eager"}
"""The ``vllm.LLM`` arguments that fields of TeacherConfig set (``engine_kwargs`` may not set them again)."""

_SECRET_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)([?&;][\w.-]*(?:key|token|secret|password|passwd|auth|sig|credential)[\w.-]*=)"
                           r"[^&#\s'\"]*")


@dataclass
class TeacherConfig:
    """How car_hf generates a response column: the teacher, its prompt, sampling, and the engine's options."""

    teacher: str | None = field(
        default=None,
        metadata={"help": "The teacher: Hub id, folder or .gguf file (transformers, vllm), or the model name an "
                          "OpenAI-compatible server serves (openai)."},
    )
    teacher_revision: str | None = field(default=None, metadata={"help": "Hub revision of the teacher."})
    teacher_name: str | None = field(
        default=None,
        metadata={"help": "Label of this teacher in rankings and provenance (default: the teacher id, with a hash "
                          "of the system prompt when there is one)."},
    )
    engine: str = field(
        default="auto",
        metadata={"help": "auto (openai with base_url, else vllm when installed with a GPU, else transformers) | "
                          "transformers | vllm | openai.", "choices": list(ENGINES)},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System turn put before every prompt (rows with their own are refused)."})
    max_new_tokens: int = field(
        default=512, metadata={"help": "Token cap of a response; a response cut there is flagged (finish 'length')."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 is greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1] (sampling only)."})
    generation_seed: int = field(
        default=0, metadata={"help": "Seed of sampling (per request for vllm/openai, per batch for transformers)."})
    generation_column: str = field(default="response", metadata={"help": "Name of the generated column."})
    input_column: str | None = field(
        default=None,
        metadata={"help": "Column holding each prompt: a string (one user turn) or a list of chat messages ending "
                          "with a user turn (default: the first of messages, prompt, instruction)."},
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "Chat template (a Jinja string or a file) for a teacher whose tokenizer has none "
                          "(transformers, vllm; a server applies its own)."},
    )
    base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (engine openai)."})
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "NAME of the environment variable holding the endpoint's token (e.g. HF_TOKEN); "
                          "none: no token is sent."},
    )
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once (openai)."})
    max_retries: int = field(
        default=5, metadata={"help": "Retries of a request after 429, 5xx, timeouts or connection errors (openai)."})
    retry_backoff: float = field(
        default=1.0, metadata={"help": "First retry delay in seconds, doubled at each retry, at most 60 s (openai)."})
    request_timeout: float = field(default=600.0, metadata={"help": "Seconds before a request times out (openai)."})
    generation_batch_tokens: int = field(
        default=16384,
        metadata={"help": "Budget of a generation batch: rows x (longest prompt + max_new_tokens), which bounds "
                          "the KV cache (transformers)."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "auto (fp32 on CPU, bf16 on capable GPUs) | float32 | bfloat16 | float16 (or fp32, bf16, "
                          "fp16; recorded under the first names, vLLM's)."})
    teacher_device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (transformers; default: the first GPU, else the CPU)."})
    teacher_trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the teacher's custom model code (transformers, vllm)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs one vLLM engine spans (vllm)."})
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={"help": "Share of each GPU's memory vLLM takes for the weights, activations and its KV cache, in "
                          "(0, 1] (vllm; default: vLLM's 0.9). Lower it when something else holds GPU memory."})
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "Context length vLLM allocates for, prompt + response (vllm; default: the model's). Lower "
                          "it to start a long-context model on a smaller GPU; a prompt that does not fit with "
                          "max_new_tokens is an error naming its row."})
    enforce_eager: bool = field(
        default=False, metadata={"help": "Run vLLM without CUDA graphs: less memory and a faster start, slower "
                                         "decoding (vllm)."})
    engine_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Any other vllm.LLM (EngineArgs) option: a mapping in YAML, JSON on the command line, e.g. "
                          "'{\"max_num_seqs\": 512, \"quantization\": \"fp8\"}' (vllm; names checked against the "
                          "installed vLLM's EngineArgs)."})

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "max_concurrency", "generation_batch_tokens", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.retry_backoff < 0 or self.request_timeout <= 0:
            raise ConfigError("max_retries and retry_backoff must be >= 0 and request_timeout > 0, got "
                              f"{self.max_retries}, {self.retry_backoff}, {self.request_timeout}")
        if not self.generation_column:
            raise ConfigError("generation_column must be a column name")
        if self.engine == "openai" and not self.base_url:
            raise ConfigError("engine openai needs base_url, the endpoint (e.g. http://localhost:8000/v1)")
        if self.base_url is not None and self.engine in ("transformers", "vllm"):
            raise ConfigError(f"base_url is for engine openai; engine {self.engine} runs the teacher itself")
        if self.chat_template is not None and (self.engine == "openai" or self.base_url):
            raise ConfigError("chat_template does not apply to an endpoint: the server applies its own (vLLM: "
                              "`vllm serve MODEL --chat-template FILE`; llama.cpp: `--chat-template-file FILE`)")
        if self.api_key_env is not None and _looks_like_a_token(self.api_key_env):
            raise ConfigError("api_key_env is the NAME of an environment variable holding the token (e.g. HF_TOKEN), "
                              "not the token itself")
        if self.chat_template is not None and "{" not in self.chat_template \
                and not Path(self.chat_template).expanduser().is_file():
            raise ConfigError(f"chat_template: {self.chat_template!r} is neither a Jinja template nor a file")
        # str(torch.float32) is "torch.float32": keep the short name so keys and records stay stable.
        dtype = str(self.teacher_dtype).removeprefix("torch.")
        if dtype not in TEACHER_DTYPES:
            raise ConfigError(f"teacher_dtype must be one of {sorted(TEACHER_DTYPES)}, got {self.teacher_dtype!r}")
        self.teacher_dtype = TEACHER_DTYPES[dtype]
        self._check_vllm_options()
        if self.teacher_device is not None:
            self.teacher_device = str(self.teacher_device)

    def _check_vllm_options(self) -> None:
        if isinstance(self.engine_kwargs, str):
            try:
                self.engine_kwargs = json.loads(self.engine_kwargs)
            except json.JSONDecodeError as error:
                raise ConfigError(f"engine_kwargs must be a JSON object, e.g. '{{\"max_num_seqs\": 512}}': {error}") \
                    from None
        if self.engine_kwargs is not None and not isinstance(self.engine_kwargs, dict):
            raise ConfigError(f"engine_kwargs must be a mapping of vllm.LLM options, got {self.engine_kwargs!r}")
        self.engine_kwargs = dict(self.engine_kwargs) if self.engine_kwargs else None
        for name in sorted(set(self.engine_kwargs or {}) & set(VLLM_OPTIONS)):
            raise ConfigError(f"engine_kwargs sets {name!r}, which car_hf sets from {VLLM_OPTIONS[name]}: set "
                              f"{VLLM_OPTIONS[name]} instead")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if (self.engine in ("transformers", "openai") or self.base_url) and self.vllm_options():
            engine = "openai" if self.base_url else self.engine
            raise ConfigError(f"{sorted(self.vllm_options())} are options of engine vllm; engine {engine} does not "
                              "use them")

    def vllm_options(self) -> dict[str, Any]:
        """The ``vllm.LLM`` options set beyond vLLM's defaults: the engine fields and ``engine_kwargs``."""
        options = {"gpu_memory_utilization": self.gpu_memory_utilization, "max_model_len": self.max_model_len,
                   "enforce_eager": self.enforce_eager or None}
        return {k: v for k, v in options.items() if v is not None} | dict(self.engine_kwargs or {})

    @classmethod
    def from_kwargs(cls, config: TeacherConfig | None = None, **kwargs: Any) -> TeacherConfig:
        """``config`` (or the defaults) updated by keyword arguments (``revision=`` sets ``teacher_revision``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "revision" in kwargs:
            kwargs["teacher_revision"] = kwargs.pop("revision")
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; TeacherConfig has {sorted(names)}")
        return dataclasses.replace(config or cls(), **kwargs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def label(self) -> str:
        """The teacher's name in rankings: ``teacher_name``, else the id (``@revision``) and a system-prompt hash."""
        if self.teacher_name:
            return self.teacher_name
        label = f"{self.teacher}@{self.teacher_revision}" if self.teacher_revision else str(self.teacher)
        if self.system_prompt:
            label += f" [system {hashlib.blake2b(self.system_prompt.encode(), digest_size=4).hexdigest()}]"
        return label

    def template_text(self) -> str | None:
        """The ``chat_template`` override as Jinja text (read from its file when it names one)."""
        if self.chat_template is None or "{" in self.chat_template:
            return self.chat_template
        return Path(self.chat_template).expanduser().read_text()

    def sampling(self) -> dict[str, Any]:
        """What decides the text besides the model and the prompt, as recorded with every response."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p if not self.greedy else None, "seed": self.generation_seed}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """What a generated dataset records about its teacher: every field (credentials in ``base_url`` masked), the
        label, the code version."""
        return self.to_dict() | {"base_url": mask_secrets(self.base_url), "teacher_label": self.label,
                                 "car_hf_version": __version__}

    def cache_key(self) -> dict[str, Any]:
        """The fields that change generated text, as JSON-able data (for :mod:`car_hf.core.cache`).

        A chat template counts by its text (not the file holding it); the device by its type only, so the
        processes of a multi-GPU job share one cache; ``base_url`` without its credentials (a key changes no text).
        """
        key = {k: v for k, v in json.loads(json.dumps(self.to_dict(), default=str)).items() if k not in _NOT_IN_KEY}
        key["base_url"] = mask_secrets(self.base_url)
        key["chat_template"] = self.template_text()
        key["teacher_device"] = None if self.teacher_device is None else self.teacher_device.split(":")[0]
        return key


def _looks_like_a_token(name: str) -> bool:
    """Not an environment variable name (HF_TOKEN, OPENAI_API_KEY), but a token pasted in its place."""
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name) and any(c.isdigit() for c in name)
    valid = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name)
    return not valid or name.startswith("hf_") or (len(name) > 24 and mixed)


def mask_secrets(text: str | None) -> str | None:
    """``text`` with the credentials of every URL in it masked: ``user:password@`` and query values whose name
    speaks of a key, token, secret, password or signature (``?api-key=``, ``&key=``, ``&sig=``).

    >>> mask_secrets("https://me:sk-123@host/v1?api-key=abc&model=m&key=xyz")
    'https://***@host/v1?api-key=***&model=m&key=***'
    """
    if text is None:
        return None
    return _SECRET_QUERY.sub(r"\1***", _SECRET_USERINFO.sub(r"\1***@", text))


def api_key(config: TeacherConfig) -> str | None:
    """The endpoint's token, read from the environment variable ``config.api_key_env`` names (None: no token)."""
    if config.api_key_env is None:
        return None
    value = os.environ.get(config.api_key_env)
    if not value:
        raise ConfigError(f"api_key_env={config.api_key_env!r}: that environment variable is not set or empty; "
                          f"export {config.api_key_env}=<token>, or leave api_key_env unset to send no token")
    return value
