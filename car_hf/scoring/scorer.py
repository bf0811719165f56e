"""``add_car``: the ``Dataset.map`` transform adding reward, base-loss and per-example CAR columns.

Example:
    >>> from car_hf import add_car
    >>> scorer = add_car(base_model="google/gemma-3-270m", reward_column="judge_preference", beta=0.5)
    >>> scorer.config.beta, scorer.config.reward_column
    (0.5, 'judge_preference')
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from car_hf._version import __version__
from car_hf.core.car import example_car, transform_rewards
from car_hf.core.config import POINTWISE_TRANSFORMS, CARConfig
from car_hf.core.errors import ConfigError
from car_hf.core.students import is_student_list, student_column
from car_hf.core.transform import StudentPart, StudentTransforms


class CARScorer:
    """``Dataset.map(..., batched=True)`` transform adding reward, base-loss and per-example CAR columns.

    Built by :func:`add_car`. Pickles as its recipe (the two scorers' recipes and the configuration).
    ``per_row_car=False`` leaves the ``car`` column out: jobs whose ranking or selection applies a pool
    reward transform (minmax, shift: it needs every row) score rewards and losses only.

    Several students (``base_model=[s1, s2]``, or a mapping ``{label: model}``): ``reward`` once, and per student
    ``base_loss@<label>`` ... ``car@<label>`` (:mod:`car_hf.core.students`; ``labels`` lists them). :meth:`map` scores
    the rewards, then each student over every row, one model in memory at a time, each its own part
    (:meth:`reward_part`, :meth:`student_parts`: each with its own ``cache_identity()``, so a cached job that gains a
    student scores only that student). As a ``Dataset.map`` transform it does the same per batch (each student
    loaded in turn, per batch).
    """

    def __init__(self, base_model: Any = None, *, reward_model: Any = None, config: CARConfig | None = None,
                 per_row_car: bool = True, **options: Any):
        from car_hf.scoring.loss import BaseLossScorer, student_losses
        from car_hf.scoring.reward import RewardFunctionScorer, RewardScorer, add_reward

        if is_student_list(base_model) and len(base_model) == 1:
            base_model = base_model[0]
        # Model specs given as strings are configuration; objects (loaded pairs, references) are passed through.
        for name, value in (("base_model", base_model), ("reward_model", reward_model)):
            if isinstance(value, (str, os.PathLike)):
                options[name] = str(value)
        if is_student_list(base_model) and all(isinstance(s, (str, os.PathLike)) for s in base_model):
            options["base_model"], base_model = [os.fspath(s) for s in base_model], None
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
        if isinstance(base_model, StudentTransforms):  # rebuilt from its recipe
            self.loss: Any = base_model
        elif isinstance(base_model, Mapping) or is_student_list(base_model) or isinstance(self.config.base_model, list):
            # Each student's losses depend on its own model and the loss options only, not on the reward or the others.
            defaults = CARConfig()
            loss_config = dataclasses.replace(
                self.config, base_model=None, base_model_revision=None, reward_model=None, reward_model_revision=None,
                reward_column=None, beta=defaults.beta, reward_transform=defaults.reward_transform)
            self.loss = student_losses(self.config.base_model if base_model is None else base_model, config=loss_config)
        else:
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

    @property
    def labels(self) -> list[str] | None:
        """The students' labels when there are several (their columns are suffixed by them), else None."""
        return self.loss.labels if isinstance(self.loss, StudentTransforms) else None

    def reward_part(self) -> RewardPart:
        """The reward half alone (``reward``, ``reward_truncated``): what a several-student job scores once."""
        return RewardPart(self)

    def student_parts(self) -> list[StudentPart]:
        """One part per student (its loss columns, suffixed), in order; ``[]`` with a single student."""
        return list(self.loss.parts) if isinstance(self.loss, StudentTransforms) else []

    def __reduce__(self):
        reward = self.reward.spec if self.reward is not None else None
        loss = self.loss if isinstance(self.loss, StudentTransforms) else self.loss.model
        return (_rebuild_car, (loss, reward, self.config, self.per_row_car, __version__))

    def __repr__(self) -> str:
        source = self.reward.spec if self.reward is not None else repr(self.config.reward_column or "reward")
        base = self.labels if self.labels is not None else self.loss.model
        return f"CARScorer(base={base!r}, reward={source}, beta={self.config.beta})"

    def cache_identity(self) -> dict[str, Any]:
        """What the scores depend on, for :func:`car_hf.core.cache.scoring_key`: model fingerprints and the config."""
        if self.labels is not None:
            return {"transform": "CARScorer", "students": self.loss.cache_identity(),
                    "reward": self.reward.cache_identity() if self.reward is not None else None,
                    "config": self.config.cache_key(), "per_row_car": self.per_row_car}
        return {"transform": "CARScorer", "base_model": self.loss.model.fingerprint,
                "reward": self.reward.cache_identity() if self.reward is not None else None,
                "config": self.config.cache_key(), "per_row_car": self.per_row_car, **self.loss.extra_options()}

    def scoring_config(self) -> dict[str, Any]:
        """What a card or a leaderboard must record about how the columns were made: :meth:`CARConfig.record`
        with the models as they were actually loaded (several students: ``base_model`` lists them and ``students``
        holds each one's ``label``, ``id``, ``revision`` and ``dtype``)."""
        if self.labels is not None:
            described = [(part.label, part.transform.describe()) for part in self.loss.parts]
            record = self.config.record() | {
                "base_model": [d.get("id") for _, d in described], "base_model_revision": None,
                "base_model_dtype": None, "students": [{"label": label, "id": d.get("id"),
                                                        "revision": d.get("revision"), "dtype": d.get("dtype")}
                                                       for label, d in described]}
        else:
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
            features |= {_car_column(label): Value("float64") for label in self.labels or [None]}
        return Features(features)

    def _checked_rewards(self, batch: Mapping[str, Sequence[Any]], args: Sequence[Any]) -> tuple[list[Any], Any, Any]:
        """Row names, the reward column read (None: a model scores) and its values, checked (before any model pass)."""
        from car_hf.core.inputs import check_numbers, need_column
        from car_hf.core.transform import row_names, split_map_args

        names = row_names(batch, split_map_args(args)[0])
        column = self.reward_source(list(batch.keys()))
        if self.reward is None and self.config.reward_column is not None:
            need_column(column, list(batch.keys()), "reward_column: rewards of each row")
        return names, column, check_numbers(batch[column], column, names=names) if column is not None else None

    def _reward_columns(self, batch: Mapping[str, Sequence[Any]], args: Sequence[Any], rewards: Any) -> dict[str, list]:
        if rewards is not None:
            return {"reward": rewards.tolist()}
        if self.reward is None:  # bare use without a reward column: the default reward model
            from car_hf.scoring.reward import DEFAULT_REWARD_MODEL, RewardScorer

            self.reward = RewardScorer(DEFAULT_REWARD_MODEL, config=self.config)
        return self.reward(batch, *args)

    def _car_columns(self, rewards: Sequence[Any], losses: Mapping[str, Sequence[Any]], names: Sequence[Any],
                     column: str) -> dict[str, list[float]]:
        """``car`` (``car@<label>`` per student) from the rewards and each student's ``base_loss`` in ``losses``."""
        values, _ = transform_rewards(rewards, self.config.reward_transform, names=names, column=column)
        return {_car_column(label): example_car(values, losses[_loss_column(label)], self.config.beta).tolist()
                for label in self.labels or [None]}

    def rewards(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        """The reward columns of a batch alone (what :meth:`reward_part` maps)."""
        _, _, rewards = self._checked_rewards(batch, args)
        return self._reward_columns(batch, args, rewards)

    def map(self, dataset: Any, *, run: Any = None, **map_options: Any) -> Any:
        """``dataset`` with this scorer's columns, every row kept.

        One student: :func:`car_hf.core.data.map_scores` (``map_options``: ``batch_size``, ``num_proc``, ``rows``,
        ``desc``), exactly. Several: the rewards once, then each student over every row, one model in memory at a
        time (:func:`car_hf.core.transform.map_parts`; students whose columns the data already holds are reused
        after a tokenizer check), then ``car@<label>``. ``run(part)`` applies one part instead of ``map_scores``
        (``recipes/score.py``: the chunked, cached, distributed path); when it returns None (not the main process),
        so does this.
        """
        from datasets import Value

        from car_hf.core.data import map_scores
        from car_hf.core.transform import map_parts

        if self.labels is None:
            return run(self) if run is not None else map_scores(dataset, self, **map_options)
        scored = map_parts(dataset, [self.reward_part(), *self.loss.to_score(dataset)], run=run, **map_options)
        if scored is None or not self.per_row_car:
            return scored
        losses = {_loss_column(label): scored[_loss_column(label)] for label in self.labels}
        cars = self._car_columns(scored["reward"], losses, list(range(len(scored))),
                                 self.reward_source(dataset.column_names) or "reward")
        order = [*scored.column_names, *(c for c in cars if c not in scored.column_names)]
        scored = scored.remove_columns([c for c in cars if c in scored.column_names])
        for name, values in cars.items():
            scored = scored.add_column(name, values, feature=Value("float64"))
        return scored.select_columns(order)  # a recomputed car@<label> keeps its place

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        # Checked before the model pass (on the first batch: before any model loads), not after it.
        names, column, rewards = self._checked_rewards(batch, args)
        out = self.loss(batch, *args)
        out |= self._reward_columns(batch, args, rewards)
        if not self.per_row_car:
            return out
        return out | self._car_columns(out["reward"], out, names, column if rewards is not None else "reward")


class RewardPart:
    """The reward half of a several-student :class:`CARScorer` (``reward``, ``reward_truncated``): a transform of its
    own, pickled and cached without the students (rewards do not depend on them)."""

    def __init__(self, scorer: CARScorer):
        defaults = CARConfig()
        config = dataclasses.replace(scorer.config, base_model=None, base_model_revision=None, ifd=defaults.ifd,
                                     beta=defaults.beta, reward_transform=defaults.reward_transform)
        # The reward transform rebuilt from its spec under this config: its identity then names no student either.
        spec = scorer.reward.spec if scorer.reward is not None else None
        self.scorer = CARScorer(reward_model=spec, config=config, per_row_car=False)

    def __reduce__(self):
        return (_rebuild_reward_part, (self.scorer,))

    def __repr__(self) -> str:
        return f"RewardPart({self.scorer!r})"

    def cache_identity(self) -> dict[str, Any]:
        reward = self.scorer.reward
        return {"transform": "CARRewards", "reward": reward.cache_identity() if reward is not None else None,
                "config": self.scorer.config.cache_key()}

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        features = self.scorer.score_features(columns)
        return {name: features[name] for name in ("reward", "reward_truncated") if name in features}

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        return self.scorer.rewards(batch, *args)


def _rebuild_reward_part(scorer: CARScorer) -> RewardPart:
    part = RewardPart.__new__(RewardPart)
    part.scorer = scorer
    return part


def _loss_column(label: str | None) -> str:
    return "base_loss" if label is None else student_column("base_loss", label)


def _car_column(label: str | None) -> str:
    return "car" if label is None else student_column("car", label)


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
        base_model: the student base model (Hub id, folder, ``.gguf`` file, or ``(model, tokenizer)``), or a list
            of several (``"label=model"`` names a label): ``reward`` once and ``base_loss@<label>`` ...
            ``car@<label>`` per student; score with ``scorer.map(ds)`` (one student in memory at a time).
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
