"""Reward-model scores of responses: ``add_reward``.

Any ``AutoModelForSequenceClassification`` with a single output (Skywork-Reward style) works; the
conversation is rendered with the *reward model's* chat template (its own, not the base model's).
Custom-head models such as ArmoRM, whose output carries a ``.score``, load only with an explicit
``trust_remote_code=True``.

Example:
    >>> from car_hf import add_reward
    >>> from datasets import Dataset
    >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!"}])
    >>> scored = ds.map(add_reward("Skywork/Skywork-Reward-V2-Qwen3-0.6B"), batched=True)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from car_hf.core import formats
from car_hf._version import __version__
from car_hf.core.batching import model_batches, to_device
from car_hf.core.config import CARConfig, import_object
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.formats import Example, Rendered
from car_hf.core.inputs import check_numbers
from car_hf.core.transform import ModelTransform, row_names, split_map_args

DEFAULT_REWARD_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
"""A small, strong open reward model (0.6B, Bradley-Terry head, one output), used when no reward
model and no ``reward`` column is given. Its rewards can be negative: CAR then needs a reward
transform (see :func:`car_hf.core.car.transform_rewards`)."""


def _pooled_scores(output: Any) -> torch.Tensor:
    """One float per row from a reward model's output (``.score`` heads first, else 1-wide logits)."""
    score = getattr(output, "score", None)
    if score is not None:
        return score.reshape(score.shape[0], -1)[:, 0].float()
    logits = output.logits
    if logits.shape[-1] != 1:
        raise ValueError(
            f"the reward model has {logits.shape[-1]} outputs; car_hf needs one (a Skywork-style "
            "reward head) or a custom head returning .score (ArmoRM, with trust_remote_code=True)"
        )
    return logits[:, 0].float()


def reward_scores(
    model: Any, sequences: list[Rendered], *, pad_id: int, batch_tokens: int, max_rows: int | None
) -> list[float]:
    """Reward of each token sequence, batched by length; order preserved.

    Right padding: the model pools the last non-pad token, which is the same token with or without
    padding, so batched scores equal one-at-a-time scores. Scores stay on the device until all batches are done:
    one transfer back per call, not one host sync per row.
    """
    device = next(model.parameters()).device
    scores = torch.full((len(sequences),), math.nan, dtype=torch.float32, device=device)
    with torch.inference_mode():
        for members, input_ids, attention_mask in model_batches(
            [s.ids for s in sequences], pad_id, device, batch_tokens=batch_tokens, max_rows=max_rows
        ):
            values = _pooled_scores(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
            scores.index_copy_(0, to_device(torch.tensor(members, dtype=torch.long), device), values)
    return scores.tolist()


class RewardScorer(ModelTransform):
    """``Dataset.map(..., batched=True)`` transform adding ``reward`` and ``reward_truncated``.

    Built by :func:`add_reward`; see there for the options.
    """

    kind = "reward"
    revision_field = "reward_model_revision"

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        """The columns :meth:`score` adds and their types (a 0-row dataset gets them: :func:`car_hf.core.data.map_scores`)."""
        from datasets import Value

        return {"reward": Value("float64"), "reward_truncated": Value("bool")}

    def score(self, model: Any, tokenizer: Any, examples: list[Example | None]) -> dict[str, list[Any]]:
        rendered = [self.render(e, tokenizer) if e is not None else Rendered([], 0, False) for e in examples]
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
        scores = reward_scores(
            model, rendered, pad_id=pad_id, batch_tokens=self.config.batch_tokens, max_rows=self.config.max_rows
        )
        return {"reward": scores, "reward_truncated": [r.truncated for r in rendered]}


def add_reward(model: Any = DEFAULT_REWARD_MODEL, **options: Any) -> RewardScorer | RewardFunctionScorer:
    """A ``Dataset.map(fn, batched=True)`` transform adding each response's reward-model score.

    ``model`` may also be a reward *function* in TRL's ``reward_funcs`` convention (see
    :class:`RewardFunctionScorer`), e.g. a correctness check against a reference column.

    Args:
        model: a Hub id, local folder, or loaded ``(model, tokenizer)`` of a sequence classifier with
            one output; defaults to :data:`DEFAULT_REWARD_MODEL`.
        trust_remote_code: required for custom heads (ArmoRM's ``.score`` output).
        max_length: token cap (default 2048); longer conversations are cut on the right and flagged
            in ``reward_truncated``.
        batch_tokens, max_rows, dtype, device, revision, plain_template, empty_response, messages,
            prompt, response: as in :func:`car_hf.add_base_loss` (an empty response gets NaN by default).

    Adds ``reward`` (float) and ``reward_truncated`` (bool).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!"}])
        >>> ds.map(add_reward("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"), batched=True)  # doctest: +SKIP
    """
    if isinstance(model, str) and FUNCTION_SPEC.fullmatch(model):
        model = import_reward_function(model)
    if is_reward_function(model):
        return RewardFunctionScorer(model, **options)
    return RewardScorer(model, **options)


FUNCTION_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
"""``module:function`` (or ``module:Class``, instantiated without arguments): a reward function by import path,
as the CLI and YAML configs name one, e.g. ``car_hf.generation.tasks:AnswerReward``."""


def import_reward_function(spec: str) -> Callable[..., Sequence[Any]]:
    """The reward function an import path names; a class is instantiated with no arguments."""
    target = import_object(spec, "reward function")
    return target() if isinstance(target, type) else target


def is_reward_function(reward: Any) -> bool:
    """A callable that is not a model: a plain function or a callable object (not a loaded (model, tokenizer))."""
    return callable(reward) and not isinstance(reward, (tuple, torch.nn.Module))


class RewardFunctionScorer:
    """``Dataset.map(..., batched=True)`` transform adding ``reward`` from a reward *function*.

    The function follows TRL's ``reward_funcs`` convention (as in ``GRPOTrainer``): called with keyword
    arguments ``prompts`` and ``completions`` (strings, or message lists for conversational data) and every
    other column of the batch, it returns one float per row (``None``: no reward for that row, NaN). Built by
    :func:`add_reward` when given a callable. Empty responses get NaN under the default ``empty_response``
    policy, without calling the function. It pickles and hashes as the function (by its code), and its cache
    identity is the function's qualified name and a hash of its source.
    """

    def __init__(self, function: Callable[..., Sequence[Any]], *, config: CARConfig | None = None, **options: Any):
        if not callable(function):
            raise ConfigError(f"a reward function must be callable, got {type(function).__name__}")
        self.function = function
        self.config = CARConfig.from_kwargs(config, **options)

    def __reduce__(self):
        return (_rebuild_function_scorer, (self.function, self.config, __version__))

    @property
    def spec(self) -> Callable[..., Sequence[Any]]:
        return self.function

    @property
    def name(self) -> str:
        target = self.function if inspect.isfunction(self.function) else type(self.function)
        return f"{target.__module__}.{target.__qualname__}"

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        """The column this scorer adds and its type (a 0-row dataset gets it: :func:`car_hf.core.data.map_scores`)."""
        from datasets import Value

        return {"reward": Value("float64")}

    def describe(self) -> dict[str, Any]:
        """What a card records: the function's qualified name."""
        return {"id": f"function:{self.name}", "revision": None}

    def cache_identity(self) -> dict[str, Any]:
        from car_hf.core.cache import code_digest

        return {"transform": "RewardFunctionScorer", "function": self.name, "source": code_digest(self.function),
                "config": self.config.cache_key()}

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        indices, _ = split_map_args(args)
        config = self.config
        layout = formats.detect_layout(list(batch.keys()), messages=config.messages_column,
                                       prompt=config.prompt_column, response=config.response_column)
        names = row_names(batch, indices)
        prompts, completions, todo = [], [], []
        for i, row in enumerate(names):
            example = formats.row_example(batch, i, layout, row)
            if formats.is_empty(example.response) and config.empty_response != "score":
                if config.empty_response == "raise":
                    raise InputError(f"row {row}, column {layout.response!r}: the response is empty")
                continue
            raw_prompt = batch[layout.prompt][i] if layout.prompt else None
            conversational = not isinstance(raw_prompt, str)
            prompts.append(example.prompt if conversational else raw_prompt)
            completions.append([{"role": "assistant", "content": example.response}] if conversational
                               else example.response)
            todo.append(i)
        rewards = [math.nan] * len(names)
        if todo:
            used = {layout.prompt, layout.response}
            others = {k: [v[i] for i in todo] for k, v in batch.items() if k not in used}
            values = self.function(prompts=prompts, completions=completions, **others)
            if values is None or len(values) != len(todo):
                raise InputError(f"reward function {self.name} returned {0 if values is None else len(values)} "
                                 f"values for {len(todo)} rows; it must return one per completion")
            checked = check_numbers(values, f"reward function {self.name}", names=[names[i] for i in todo])
            for i, value in zip(todo, checked.tolist()):
                rewards[i] = value
        return {"reward": rewards}


def _rebuild_function_scorer(function: Callable[..., Sequence[Any]], config: CARConfig, version: str):
    return RewardFunctionScorer(function, config=config)
