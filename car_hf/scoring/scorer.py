"""``add_car``: the ``Dataset.map`` transform adding reward, base-loss and per-example CAR columns.

Example:
    >>> from car_hf import add_car
    >>> scorer = add_car(base_model="google/gemma-3-270m", reward_column="judge_preference", beta=0.5)
    >>> scorer.config.beta, scorer.config.reward_column
    (0.5, 'judge_preference')
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from car_hf._version import __version__
from car_hf.core.car import example_car, transform_rewards
from car_hf.core.config import POINTWISE_TRANSFORMS, CARConfig
from car_hf.core.errors import ConfigError


class CARScorer:
    """``Dataset.map(..., batched=True)`` transform adding reward, base-loss and per-example CAR columns.

    Built by :func:`add_car`. Pickles as its recipe (the two scorers' recipes and the configuration).
    ``per_row_car=False`` leaves the ``car`` column out: jobs whose ranking or selection applies a pool
    reward transform (minmax, shift: it needs every row) score rewards and losses only.
    """

    def __init__(self, base_model: Any = None, *, reward_model: Any = None, config: CARConfig | None = None,
                 per_row_car: bool = True, **options: Any):
        from car_hf.scoring.loss import BaseLossScorer
        from car_hf.scoring.reward import RewardFunctionScorer, RewardScorer, add_reward

        # Model specs given as strings are configuration; objects (loaded pairs, references) are passed through.
        for name, value in (("base_model", base_model), ("reward_model", reward_model)):
            if isinstance(value, (str, os.PathLike)):
                options[name] = str(value)
        self.config = CARConfig.from_kwargs(config, **options)
        self.per_row_car = per_row_car
        if per_row_car and self.config.reward_transform not in POINTWISE_TRANSFORMS:
            raise ConfigError(
                f"add_car computes CAR row by row, so reward_transform must be one of {POINTWISE_TRANSFORMS}; pool "
                f"transforms ({self.config.reward_transform!r}) need every row: use rank_generators(..., "
                f"reward_transform={self.config.reward_transform!r}) or CARFilter(...).fit(dataset)"
            )
        if reward_model is not None and self.config.reward_column is not None:
            raise ConfigError("set reward_model or reward_column, not both")
        base = base_model if base_model is not None and not isinstance(base_model, (str, os.PathLike)) \
            else self.config.resolved_base_model
        self.loss = BaseLossScorer(base, config=self.config)
        reward = reward_model if reward_model is not None and not isinstance(reward_model, (str, os.PathLike)) \
            else self.config.reward_model
        self.reward = None
        if isinstance(reward, (RewardScorer, RewardFunctionScorer)):
            self.reward = reward
        elif reward is not None:
            self.reward = add_reward(reward, config=self.config)  # a model, or a reward function

    @property
    def beta(self) -> float:
        return self.config.beta

    def __reduce__(self):
        reward = self.reward.spec if self.reward is not None else None
        return (_rebuild_car, (self.loss.model, reward, self.config, self.per_row_car, __version__))

    def __repr__(self) -> str:
        source = self.reward.spec if self.reward is not None else repr(self.config.reward_column or "reward")
        return f"CARScorer(base={self.loss.model!r}, reward={source}, beta={self.config.beta})"

    def cache_identity(self) -> dict[str, Any]:
        """What the scores depend on, for :func:`car_hf.core.cache.scoring_key`: model fingerprints and the config."""
        return {"transform": "CARScorer", "base_model": self.loss.model.fingerprint,
                "reward": self.reward.cache_identity() if self.reward is not None else None,
                "config": self.config.cache_key(), "per_row_car": self.per_row_car, **self.loss.extra_options()}

    def scoring_config(self) -> dict[str, Any]:
        """What a card or a leaderboard must record about how the columns were made: :meth:`CARConfig.record`
        with the models as they were actually loaded."""
        base = self.loss.describe()  # with the dtype the model is loaded in
        record = self.config.record() | {"base_model": base.get("id"), "base_model_revision": base.get("revision"),
                                         "base_model_dtype": base.get("dtype")}
        if self.reward is not None:
            described = self.reward.describe()
            record |= {"reward_model": described.get("id"), "reward_model_revision": described.get("revision"),
                       "reward_model_dtype": described.get("dtype")}
        else:
            record |= {"reward_model": None, "reward_column": self.config.reward_column or "reward"}
        return record

    def reward_source(self, columns: Sequence[str]) -> str | None:
        """The column this scorer copies rewards from, for data with ``columns``; None when a model scores.

        The bare use (no reward model, no ``reward_column``) reads an existing ``reward`` column, else scores
        with :data:`car_hf.scoring.reward.DEFAULT_REWARD_MODEL`.
        """
        if self.reward is not None:
            return None
        if self.config.reward_column is not None:
            return self.config.reward_column
        return "reward" if "reward" in columns else None

    def score_features(self, columns: Sequence[str]) -> Any:
        """The columns this scorer adds to data with ``columns``, typed as scoring writes them (what a 0-row
        dataset gets from :func:`car_hf.core.data.map_scores`, since ``Dataset.map`` never calls a function on no rows)."""
        from datasets import Features, Value

        from car_hf.scoring.reward import DEFAULT_REWARD_MODEL, RewardScorer

        features = dict(self.loss.score_features(columns))
        if self.reward_source(columns) is not None:
            features["reward"] = Value("float64")
        else:
            reward = self.reward or RewardScorer(DEFAULT_REWARD_MODEL, config=self.config)  # built, never loaded
            features |= reward.score_features(columns)
        if self.per_row_car:
            features["car"] = Value("float64")
        return Features(features)

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        from car_hf.core.inputs import check_numbers, need_column
        from car_hf.core.transform import row_names, split_map_args

        names = row_names(batch, split_map_args(args)[0])
        column = self.reward_source(list(batch.keys()))
        if self.reward is None and self.config.reward_column is not None:
            need_column(column, list(batch.keys()), "reward_column: rewards of each row")
        # Checked before the model pass (on the first batch: before any model loads), not after it.
        rewards = check_numbers(batch[column], column, names=names) if column is not None else None
        out = self.loss(batch, *args)
        if rewards is not None:
            out["reward"] = rewards.tolist()
        else:
            if self.reward is None:  # bare use without a reward column: the default reward model
                from car_hf.scoring.reward import DEFAULT_REWARD_MODEL, RewardScorer

                self.reward = RewardScorer(DEFAULT_REWARD_MODEL, config=self.config)
            out |= self.reward(batch, *args)
            column = "reward"
        if not self.per_row_car:
            return out
        rewards, _ = transform_rewards(out["reward"], self.config.reward_transform, names=names, column=column)
        out["car"] = example_car(rewards, out["base_loss"], self.config.beta).tolist()
        return out


def _rebuild_car(loss: Any, reward: Any, config: CARConfig, per_row_car: bool, version: str) -> CARScorer:
    return CARScorer(loss, reward_model=reward, config=config, per_row_car=per_row_car)


def scorer_for_ranking(config: CARConfig) -> CARScorer:
    """The scorer of a job that ranks or selects afterwards: with a pool reward transform (minmax, shift), which
    needs every row, it scores rewards and losses only, and the ranking or selection applies the transform."""
    return CARScorer(config=config, per_row_car=config.reward_transform in POINTWISE_TRANSFORMS)


def add_car(batch: Any = None, /, *args: Any, **kwargs: Any) -> Any:
    """CAR as a ``Dataset.map(fn, batched=True)`` transform: reward, base loss and per-example CAR.

    Two ways to use it:

    * configured: ``ds.map(add_car(base_model=..., reward_column="judge_preference", beta=1.0), batched=True)``
      or ``add_car(config=CARConfig(...))``;
    * bare: ``ds.map(add_car, batched=True)`` with the documented defaults — base model
      :data:`~car_hf.core.config.DEFAULT_BASE_MODEL` (google/gemma-3-270m), rewards from an existing ``reward``
      column, else from :data:`car_hf.scoring.reward.DEFAULT_REWARD_MODEL`, beta 1.0.

    Keyword args (the fields of :class:`~car_hf.CARConfig`, with the friendly names ``max_length``,
    ``dtype``, ``device``, ``trust_remote_code``, ``messages``, ``prompt``, ``response``):
        base_model: the student base model (Hub id, folder, ``.gguf`` file, or ``(model, tokenizer)``).
        reward_model: a reward model to score responses with (see :func:`car_hf.add_reward`), or
        reward_column: a column of existing scores (an LLM judge's, ArmoRM's ...) copied to ``reward``.
        beta: CAR's loss weight (>= 0; the paper publishes none: 1.0 is car_hf's convention).
        reward_transform: ``"raise"`` (default: error on a negative reward) or ``"sigmoid"``.
        ifd: also add IFD columns (see :func:`car_hf.add_base_loss`).
        config: a :class:`~car_hf.CARConfig`; keywords override its fields.

    Adds ``reward``, ``base_loss``, ``base_loss_tokens``, ``base_loss_truncated``, ``car`` (and
    ``reward_truncated`` when a reward model scores). Missing rewards (None/NaN) give NaN CAR; a reward that is
    text (even ``"0.6"``) or ±inf, and a missing reward or response column, are an InputError naming the row and
    the column, raised before the batch's model pass (:func:`car_hf.core.inputs.check_numbers`). ``Dataset.map`` never
    calls a function on 0 rows, so a 0-row dataset gets no columns from it; :func:`car_hf.core.data.map_scores` (the
    CLI's, the recipes' and ``rank_adaptive``'s way to score) adds them, typed (:meth:`CARScorer.score_features`).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!", "judge_preference": 0.8}])
        >>> scored = ds.map(add_car(base_model="google/gemma-3-270m", reward_column="judge_preference"),
        ...                 batched=True, with_indices=True)  # doctest: +SKIP
    """
    if batch is not None:
        if not isinstance(batch, Mapping):
            raise TypeError(
                "add_car takes keyword arguments (add_car(base_model=..., beta=...)) or is passed bare "
                "to Dataset.map(add_car, batched=True)"
            )
        return _default_scorer()(batch, *args)
    return CARScorer(**kwargs)


_DEFAULT: list[CARScorer] = []


def _default_scorer() -> CARScorer:
    if not _DEFAULT:
        _DEFAULT.append(CARScorer())
    return _DEFAULT[0]
