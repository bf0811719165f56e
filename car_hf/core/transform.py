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

import os
from typing import Any, Mapping, Sequence

import torch

from car_hf.core import formats, models
from car_hf._version import __version__
from car_hf.core.config import CARConfig
from car_hf.core.errors import InputError

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
        model, tokenizer = self.load(rank)
        return self.score(model, tokenizer, examples)

    def render(self, example: formats.Example, tokenizer: Any) -> formats.Rendered:
        return formats.render(example, tokenizer, max_length=self.config.score_max_length,
                              plain_template=self.config.template)

    def score(self, model: Any, tokenizer: Any, examples: list[formats.Example | None]) -> dict[str, list[Any]]:
        raise NotImplementedError


def _rebuild(cls: type, model: ModelRef, config: CARConfig, extra: dict[str, Any], version: str) -> Any:
    return cls(model, config=config, **extra)
