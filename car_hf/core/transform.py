"""The base of car_hf's ``Dataset.map`` transforms: lazy models, cheap hashing, row names in errors.

``datasets`` fingerprints a map function by pickling it. A transform holding a 270M-parameter model
would pickle the weights on every ``map`` call (slow, and not stable across loads). A
:class:`MapTransform` therefore pickles as its *recipe* only: the model specification (a Hub id, a
path, or the fingerprint of a model object passed in) plus its options. Models are loaded lazily in
the process that runs the batch, through :func:`car_hf.core.models.load_model`'s per-process memo, so

* re-running the same ``map`` hits the datasets cache (same recipe, same fingerprint);
* ``num_proc=N, with_rank=True`` workers each load their own copy on ``cuda:{rank}``.

A model object passed by the user (``(model, tokenizer)``) is kept in a per-process registry keyed
by its fingerprint, so forked workers find it; a spawned worker cannot, and says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch

from car_hf.core import formats, models
from car_hf._version import __version__
from car_hf.core.config import CARConfig
from car_hf.core.errors import InputError
from car_hf.core.students import check_prescored_tokens, missing_rows, student_column

logger = logging.getLogger(__name__)

# A forked worker (Dataset.map(num_proc=N)) inherits the parent's OpenMP state but not its threads:
# torch's CPU kernels hang there unless they run single-threaded.
_IMPORT_PID = os.getpid()

# (model, tokenizer) objects passed by users, by fingerprint: never pickled, found again by forks.
_LIVE: dict[str, tuple[Any, Any]] = {}


class ModelRef:
    """A picklable reference to a model: a specification string, or a live object's fingerprint."""

    def __init__(self, spec: Any, *, kind: str, revision: str | None = None, trust_remote_code: bool = False):
        self.kind = kind
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        if isinstance(spec, tuple):
            self.spec = None
            self.fingerprint = models.model_fingerprint(spec, kind=kind)
            _LIVE[self.fingerprint] = spec
        else:
            self.spec = str(spec)
            self.fingerprint = models.model_fingerprint(self.spec, kind=kind, revision=revision)

    def __reduce__(self):
        return (_restore_ref, (self.spec, self.fingerprint, self.kind, self.revision, self.trust_remote_code))

    def load(self, *, dtype: Any, device: Any) -> tuple[Any, Any]:
        if self.spec is None:
            if self.fingerprint not in _LIVE:
                raise RuntimeError(
                    "this transform was built from a model object, which is not sent to other processes; "
                    "pass a Hub id or a local path instead when using num_proc with the 'spawn' start method"
                )
            spec: Any = _LIVE[self.fingerprint]
        else:
            spec = self.spec
        return models.load_model(
            spec, kind=self.kind, dtype=dtype, device=device,
            revision=self.revision, trust_remote_code=self.trust_remote_code,
        )

    def describe(self) -> dict[str, Any]:
        if self.spec is None:
            return {"id": "<model object>", "fingerprint": self.fingerprint}
        return models.describe_model(self.spec) | {"revision": self.revision}

    def dtype(self, dtype: Any, device: Any) -> str | None:
        """The dtype :meth:`load` loads in with these options, without loading (:func:`car_hf.core.models.loaded_dtype`);
        ``None`` for a model object this process does not hold."""
        spec = self.spec if self.spec is not None else _LIVE.get(self.fingerprint)
        if spec is None:
            return None
        return models.loaded_dtype(spec, dtype=dtype, device=device, revision=self.revision,
                                   trust_remote_code=self.trust_remote_code)

    def __repr__(self) -> str:
        return f"ModelRef({self.spec or self.fingerprint!r}, kind={self.kind!r})"


def _restore_ref(spec, fingerprint, kind, revision, trust_remote_code) -> ModelRef:
    ref = ModelRef.__new__(ModelRef)
    ref.spec, ref.fingerprint, ref.kind = spec, fingerprint, kind
    ref.revision, ref.trust_remote_code = revision, trust_remote_code
    return ref


def split_map_args(args: Sequence[Any]) -> tuple[Sequence[int] | None, int | None]:
    """Read ``(indices, rank)`` from what ``Dataset.map`` passes after the batch.

    ``with_indices=True`` adds a list of row indices, ``with_rank=True`` an int rank (or None);
    with both, indices come first.
    """
    indices, rank = None, None
    for arg in args:
        if isinstance(arg, (list, tuple, range)):
            indices = arg
        elif arg is None or isinstance(arg, int):
            rank = arg
        else:
            raise TypeError(f"unexpected positional argument {arg!r}: expected row indices or a rank")
    return indices, rank


def batch_size_of(batch: Mapping[str, Sequence[Any]]) -> int:
    for values in batch.values():
        return len(values)
    return 0


def row_names(batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None) -> list[Any]:
    """Dataset row numbers when ``with_indices=True`` was passed, else positions in the map batch."""
    if indices is not None:
        return list(indices)
    hint = "of this map batch (map with with_indices=True for dataset row numbers)"
    return [f"{i} {hint}" for i in range(batch_size_of(batch))]


class ModelTransform:
    """Shared plumbing of the scorers: model reference, configuration, map arguments, the rows as examples.

    Subclasses implement :meth:`score`, which receives the loaded model and tokenizer and the batch's
    examples (``None`` where the response is empty and the policy is ``"nan"``) and returns the new
    columns. Every input row gets a value; no row is ever dropped. Options come from a
    :class:`~car_hf.core.config.CARConfig` (``config=``) updated by keyword arguments (``max_length=512``).
    """

    kind = "causal_lm"
    revision_field = "base_model_revision"  # the CARConfig field holding this model's Hub revision

    def __init__(self, model: Any, *, config: CARConfig | None = None, **options: Any):
        if "revision" in options:  # the friendly keyword names this transform's own model's revision
            options[self.revision_field] = options.pop("revision")
        self.config = CARConfig.from_kwargs(config, **options)
        if isinstance(model, ModelRef):
            self.model = model
        else:
            self.model = ModelRef(model, kind=self.kind, revision=getattr(self.config, self.revision_field),
                                  trust_remote_code=self.config.score_trust_remote_code)

    def extra_options(self) -> dict[str, Any]:
        """Subclass options that are not scoring configuration but belong in the recipe."""
        return {}

    @property
    def spec(self) -> ModelRef:
        """What rebuilds this transform's model elsewhere (what a combined scorer pickles)."""
        return self.model

    def describe(self) -> dict[str, Any]:
        """What a card records about the model: ``{"id", "revision", "dtype", ...}`` (``dtype``: the one it is loaded in
        on this transform's device, e.g. float32 for a Gemma that ``dtype="auto"`` keeps out of float16)."""
        return self.model.describe() | {"dtype": self.model.dtype(self.config.score_dtype, self.config.score_device)}

    def cache_identity(self) -> dict[str, Any]:
        """What this transform's values depend on, for :func:`car_hf.core.cache.scoring_key`."""
        return {"transform": type(self).__name__, "model": self.model.fingerprint, "config": self.config.cache_key(),
                **self.extra_options()}

    def __reduce__(self):
        # The recipe only: datasets hashes this, multiprocessing sends this; never the weights. The version
        # is in the recipe so that an upgrade that changes how values are computed misses datasets' cache.
        return (_rebuild, (type(self), self.model, self.config, self.extra_options(), __version__))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.extra_options().items())
        return f"{type(self).__name__}({self.model!r}{extra}, max_length={self.config.score_max_length})"

    def load(self, rank: int | None = None) -> tuple[Any, Any]:
        """The (model, tokenizer) pair, loaded once per process (on ``cuda:{rank}`` under ``with_rank``)."""
        device: Any = self.config.score_device
        if device is None and rank is not None:
            device = rank
        model, tokenizer = self.model.load(dtype=self.config.score_dtype, device=device)
        if os.getpid() != _IMPORT_PID and model.device.type == "cpu":
            torch.set_num_threads(1)
        return model, tokenizer

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        examples, rank = self.examples(batch, *args)
        model, tokenizer = self.load(rank)
        return self.score(model, tokenizer, examples)

    def examples(self, batch: Mapping[str, Sequence[Any]],
                 *args: Any) -> tuple[list[formats.Example | None], int | None]:
        """The batch's rows as examples (``None`` for an empty response under ``empty_response="nan"``), checked
        before any model loads, and the map rank."""
        indices, rank = split_map_args(args)
        config = self.config
        # The columns first: a missing response column is reported before any model loads, not after.
        layout = formats.detect_layout(list(batch.keys()), messages=config.messages_column,
                                       prompt=config.prompt_column, response=config.response_column)
        examples: list[formats.Example | None] = []
        for i, row in enumerate(row_names(batch, indices)):
            example = formats.row_example(batch, i, layout, row)
            if formats.is_empty(example.response) and config.empty_response != "score":
                if config.empty_response == "raise":
                    raise InputError(f"row {row}, column {layout.response!r}: the response is empty")
                example = None
            examples.append(example)
        return examples, rank

    def release(self) -> None:
        """Forget the model this transform loaded from car_hf's per-process memo
        (:func:`car_hf.core.models.load_model`), so that its memory can go to the next student's; a later call loads
        it again. A model object passed in is the caller's, and stays."""
        if self.model.spec is None:
            return
        import gc

        with models._LOCK:  # the memo's own lock: loads in other threads see it before or after, whole
            name = models._normalize_spec(self.model.spec)
            for key in [k for k in models._MEMO if k[0] == name and k[1] == self.kind]:
                del models._MEMO[key]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def render(self, example: formats.Example, tokenizer: Any) -> formats.Rendered:
        return formats.render(example, tokenizer, max_length=self.config.score_max_length,
                              plain_template=self.config.template)

    def score(self, model: Any, tokenizer: Any, examples: list[formats.Example | None]) -> dict[str, list[Any]]:
        raise NotImplementedError


def _rebuild(cls: type, model: ModelRef, config: CARConfig, extra: dict[str, Any], version: str) -> Any:
    return cls(model, config=config, **extra)


class StudentPart:
    """One student's transform writing its columns suffixed by its label (``base_loss@<label>`` ...: see
    :mod:`car_hf.core.students`): a part of a several-student scoring, with the inner transform's cache identity (a
    student's values do not depend on which other students are scored, nor on its label)."""

    def __init__(self, transform: Any, label: str):
        self.transform, self.label = transform, label

    def __reduce__(self):
        return (StudentPart, (self.transform, self.label))

    def __repr__(self) -> str:
        return f"StudentPart({self.label!r}, {self.transform!r})"

    def cache_identity(self) -> dict[str, Any]:
        return self.transform.cache_identity()

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        return {student_column(name, self.label): feature
                for name, feature in self.transform.score_features(columns).items()}

    def release(self) -> None:
        self.transform.release()

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        return {student_column(name, self.label): values for name, values in self.transform(batch, *args).items()}


class StudentTransforms:
    """The same scoring under several students (``add_base_loss([s1, s2])``): one :class:`StudentPart` per student.

    As a ``Dataset.map`` transform it scores a batch under each student in turn, releasing each model before the next
    loads (one in memory at a time, each reloaded per batch); :meth:`map` instead loops over the students outside the
    batches (student 1 scores every row, is released, then student 2 ...): what the CLI and the recipes use.
    """

    def __init__(self, parts: Sequence[StudentPart]):
        self.parts = list(parts)
        self.labels = [part.label for part in self.parts]

    def __reduce__(self):
        return (StudentTransforms, (self.parts,))

    def __repr__(self) -> str:
        return f"StudentTransforms({self.labels})"

    def cache_identity(self) -> dict[str, Any]:
        return {"transform": "StudentTransforms", "students": {p.label: p.cache_identity() for p in self.parts}}

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        features: dict[str, Any] = {}
        for part in self.parts:
            features |= part.score_features(columns)
        return features

    def __call__(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for part in self.parts:
            out |= part(batch, *args)
            part.release()
        return out

    def to_score(self, dataset: Any, batch_size: int = 256) -> list[StudentPart]:
        """The parts ``dataset`` does not hold yet. A student whose columns are all there, on every row, is reused once
        its recorded ``base_loss_tokens@<label>`` are the counts its own tokenizer and template give those rows (a
        load and a tokenization, no loss pass; a mismatch is an InputError naming the column and the rows:
        :func:`~car_hf.core.students.check_prescored_tokens`); a student with a column or some rows missing is scored
        again (every row)."""
        needed = []
        for part in self.parts:
            wanted = list(part.score_features(dataset.column_names))
            tokens, loss = student_column("base_loss_tokens", part.label), student_column("base_loss", part.label)
            if any(c not in dataset.column_names for c in wanted) or missing_rows(dataset, loss) \
                    or not hasattr(part.transform, "token_counts"):
                needed.append(part)
                continue
            counted: list[int] = []
            for lo in range(0, len(dataset), batch_size):
                hi = min(lo + batch_size, len(dataset))
                counted += part.transform.token_counts(dataset[lo:hi], list(range(lo, hi)))
            part.release()
            model = part.transform.model
            check_prescored_tokens(part.label, list(dataset[tokens]), counted, model=model.spec or model.fingerprint)
            logger.info("student %s: its columns are in the data and agree with its tokenizer: reused", part.label)
        return needed

    def map(self, dataset: Any, *, run: Any = None, **map_options: Any) -> Any:
        """Every student's columns added to ``dataset``, one student at a time (see :func:`map_parts`); students whose
        columns the data already holds are reused (:meth:`to_score`)."""
        return map_parts(dataset, self.to_score(dataset), run=run, **map_options)


def map_parts(dataset: Any, parts: Sequence[Any], *, run: Any = None, **map_options: Any) -> Any:
    """``dataset`` with the columns of each part, the parts applied one after the other over every row, car_hf's
    model memo cleared after each (one model in memory at a time); None when ``run`` returns None (a process of a
    distributed job that is not the main one).

    Args:
        run: ``run(part) -> scored dataset`` applies one part (default: :func:`car_hf.core.data.map_scores` with
            ``map_options``; ``recipes/score.py``: :func:`car_hf.core.distributed.run_chunks`, so each part is its
            own cache key and a new student scores only itself).
    """
    import datasets

    from car_hf.core.data import map_scores
    from car_hf.core.models import clear_model_cache

    def default_run(part: Any) -> Any:  # each part's progress bar says which part it is
        desc = f"{map_options.get('desc') or 'Scoring'} [{getattr(part, 'label', 'rewards')}]"
        return map_scores(dataset, part, **{**map_options, "desc": desc})

    run = run or default_run
    added = []
    for part in parts:
        scored = run(part)
        clear_model_cache()
        if scored is not None:
            added.append(scored.select_columns(list(part.score_features(dataset.column_names))))
    if len(added) < len(parts):
        return None
    if len(dataset) == 0:  # nothing to concatenate: the parts' typed columns (as map_scores gives them)
        for part in added:
            dataset = dataset.remove_columns([c for c in part.column_names if c in dataset.column_names])
            for name in part.column_names:
                dataset = dataset.add_column(name, [], feature=part.features[name])
        return dataset
    replaced = [c for c in dataset.column_names if any(c in part.column_names for part in added)]
    combined = datasets.concatenate_datasets([dataset.remove_columns(replaced), *added], axis=1)
    new = [c for part in added for c in part.column_names if c not in dataset.column_names]
    return combined.select_columns([*dataset.column_names, *new])  # a replaced column keeps its place
