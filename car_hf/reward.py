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

from typing import Any

import torch

from .batching import model_batches
from .formats import Example, Rendered
from .transform import ModelTransform

DEFAULT_REWARD_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
"""A small, strong open reward model (0.6B, Bradley-Terry head, one output), used when no reward
model and no ``reward`` column is given. Its rewards can be negative: CAR then needs a reward
transform (see :func:`car_hf.car.transform_rewards`)."""


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
    padding, so batched scores equal one-at-a-time scores.
    """
    device = next(model.parameters()).device
    scores = [float("nan")] * len(sequences)
    with torch.inference_mode():
        for members, input_ids, attention_mask in model_batches(
            [s.ids for s in sequences], pad_id, device, batch_tokens=batch_tokens, max_rows=max_rows
        ):
            values = _pooled_scores(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
            for row, i in enumerate(members):
                scores[i] = float(values[row])
    return scores


class RewardScorer(ModelTransform):
    """``Dataset.map(..., batched=True)`` transform adding ``reward`` and ``reward_truncated``.

    Built by :func:`add_reward`; see there for the options.
    """

    kind = "reward"
    revision_field = "reward_model_revision"

    def score(self, model: Any, tokenizer: Any, examples: list[Example | None]) -> dict[str, list[Any]]:
        rendered = [self.render(e, tokenizer) if e is not None else Rendered([], 0, False) for e in examples]
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
        scores = reward_scores(
            model, rendered, pad_id=pad_id, batch_tokens=self.config.batch_tokens, max_rows=self.config.max_rows
        )
        return {"reward": scores, "reward_truncated": [r.truncated for r in rendered]}


def add_reward(model: Any = DEFAULT_REWARD_MODEL, **options: Any) -> RewardScorer:
    """A ``Dataset.map(fn, batched=True)`` transform adding each response's reward-model score.

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
    return RewardScorer(model, **options)
