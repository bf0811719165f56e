"""Base-model loss of responses: ``add_base_loss`` and the one loss path behind it.

``base_loss`` is the mean negative log-likelihood (nats per token) of the response tokens under the
base model: the assistant turn as the base model's chat template renders it, end-of-turn token
included, prompt masked — the tokens TRL's ``SFTTrainer`` trains on with completion-only loss.

The engine never builds full-vocabulary logits for prompt tokens: it runs the backbone, gathers the
hidden states whose *next* token is a response token, and applies the LM head only there, in tiles of
[rows, vocabulary block] fp32 logits with an online log-sum-exp, so memory stays under ``logits_mb``
whatever the vocabulary (Gemma-3's 262k vocabulary makes full logits of one 2k-token example 2 GB).

The same tiles give ``base_rank``, the mean over response tokens of the target token's rank among the vocabulary
(1 + the number of logits strictly above the target's, clipped at :data:`RANK_CLIP`): the numerator of the
rank-surprisal ratio (RSR, arXiv 2601.14249; :func:`~car_hf.rank_generators` adds the per-generator ``rsr``).

Example:
    >>> from datasets import Dataset
    >>> from car_hf import add_base_loss
    >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!"}])
    >>> scored = ds.map(add_base_loss("google/gemma-3-270m"), batched=True)  # doctest: +SKIP
    >>> scored[0]["base_loss"], scored[0]["base_loss_tokens"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch

from car_hf.core.batching import model_batches, to_device
from car_hf.core.errors import ConfigError
from car_hf.core.formats import Example, Rendered
from car_hf.core.students import is_student_list, student_labels, student_models
from car_hf.core.transform import ModelTransform, StudentPart, StudentTransforms


# Models whose head output was checked against model(...).logits in this process (by id()).
_HEAD_CHECKED: set[int] = set()

# The LM head runs on tiles of [rows, vocabulary block] fp32 logits, with an online log-sum-exp over the blocks.
# Measured on a 2-core AVX2 CPU with Gemma-3-270m's head (640 x 262k): [2048, 8192] tiles run the GEMM ~1.3x
# faster than [256 rows, whole vocabulary] chunks (the tile stays in cache for the softcap and exp passes), in
# 64 MB instead of 256 MB, whatever the vocabulary size.
_HEAD_ROWS = 2048
_VOCAB_BLOCK = 8192
# Per-token ranks are clipped here before averaging (the RSR paper's cap: a rank beyond it is "not predicted").
RANK_CLIP = 100


def _softcap(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """The model's own logit post-processing (Gemma-2/3 tanh softcapping), in place, in the head's dtype."""
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return logits if softcap is None else logits.div_(softcap).tanh_().mul_(softcap)


def _logit_tiles(
    model: Any, hidden: torch.Tensor, block: int, buffer: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(vocab offset, fp32 logits [rows, <= block])`` of the LM head on ``hidden`` [rows, H], block by block.

    The model's own logit post-processing (:func:`_softcap`) is applied in the head's dtype, as the model does. A
    plain ``nn.Linear`` head is sliced by vocabulary block (an fp32 bias-free one writes into ``buffer``: no
    allocation, no page faults per tile); any other head module (an adapter on the head, say) runs whole and is
    yielded as one tile. Tiles may be modified in place by the caller.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        yield 0, _softcap(model, head(hidden)).float()
        return
    weight, bias = head.weight, head.bias
    into_buffer = buffer is not None and bias is None and weight.dtype == hidden.dtype == torch.float32
    for lo in range(0, weight.shape[0], block):
        w = weight[lo : lo + block]
        if into_buffer:
            logits = torch.mm(hidden, w.t(), out=buffer[: hidden.shape[0], : w.shape[0]])
        else:
            logits = torch.nn.functional.linear(hidden, w, None if bias is None else bias[lo : lo + block])
        yield lo, _softcap(model, logits).float()


def _target_logits(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """The target's logit per row before any tile is computed (tiles before the target's need it), or ``None``
    for a head module yielded as one tile (its target is always in it).

    A row-wise dot product in fp32, rounded to the head's dtype and post-processed as the tiles are, so it equals
    the tile's own value up to the GEMM's summation order; in the target's tile the tile's value is used.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    logits = (hidden.float() * head.weight[targets].float()).sum(1)
    if head.bias is not None:
        logits += head.bias[targets].float()
    return _softcap(model, logits.to(head.weight.dtype)).float()


def head_tolerance(dtype: torch.dtype) -> float:
    """How far :func:`_check_head` lets the tiles' logits be from the model's own, relative and absolute: one unit in
    the last place at 1.0 of the head's dtype (bfloat16 2^-7 = 7.8e-3, float16 2^-10 = 9.8e-4), since the two come
    from GEMMs of different shapes whose results may round to neighbouring values; 1e-5 in float32 (summation order).
    A missed post-processing (a softcap, a logit scale) moves logits by far more.

    Example:
        >>> head_tolerance(torch.bfloat16), head_tolerance(torch.float16), head_tolerance(torch.float32)
        (0.0078125, 0.0009765625, 1e-05)
    """
    return max(torch.finfo(dtype).eps, 1e-5)


def _check_head(model: Any, device: torch.device) -> None:
    """Fail fast if this architecture post-processes logits in a way :func:`_logit_tiles` misses, or if its logits
    are not finite in this dtype (float16 overflows in some families: see :func:`car_hf.core.devices.fp16_unstable`)."""
    if id(model) in _HEAD_CHECKED:
        return
    head = model.get_output_embeddings().weight
    vocab = head.shape[0]
    ids = torch.arange(1, 9, device=device).remainder(vocab).unsqueeze(0)
    reference = model(input_ids=ids, use_cache=False).logits[0].float()
    if not torch.isfinite(reference).all():
        raise ConfigError(
            f"{type(model).__name__}'s own logits are not finite in {str(head.dtype).removeprefix('torch.')} (an "
            "overflow): load it in bfloat16 or float32 (dtype='bfloat16' on GPUs that have it, else 'float32')"
        )
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
    ours = torch.cat([tile for _, tile in _logit_tiles(model, hidden, block=vocab // 3 + 1)], dim=1)
    tolerance = head_tolerance(head.dtype)
    if ours.shape != reference.shape or not torch.allclose(ours, reference, rtol=tolerance, atol=tolerance):
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits in a way car_hf does not reproduce; "
            "please open an issue with the model id"
        )
    _HEAD_CHECKED.add(id(model))


def _head_scores(
    model: Any, hidden: torch.Tensor, targets: torch.Tensor, block: int, buffer: torch.Tensor | None = None,
    selective: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``-log softmax(head(hidden))[targets]`` (float64), by an online log-sum-exp over vocabulary tiles,
    and the target's rank (int64, 1 + logits strictly above the target's, clipped at :data:`RANK_CLIP`).

    ``selective`` (default: on CPU) compares only the rows that can have a logit above their target in a tile, which
    costs a host sync per tile (the rows are picked by ``nonzero``): free on a CPU, where it saves ~20% of the head
    (bench/RSR.md), but a stall of the whole queue on a GPU, where every row is compared instead (no sync; the
    comparison is a memory pass beside the tile's GEMM). Both count the same logits.
    """
    if selective is None:
        selective = hidden.device.type == "cpu"
    rows = hidden.shape[0]
    peak = torch.full((rows,), -math.inf, dtype=torch.float32, device=hidden.device)
    total = torch.zeros(rows, dtype=torch.float64, device=hidden.device)
    target_logit = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    ahead = _target_logits(model, hidden, targets)
    higher = torch.zeros(rows, dtype=torch.int64, device=hidden.device)
    for lo, tile in _logit_tiles(model, hidden, block, buffer):
        local = targets - lo
        inside = (local >= 0) & (local < tile.shape[1])
        picked = tile.gather(1, local.clamp(0, tile.shape[1] - 1)[:, None])[:, 0]
        target_logit = torch.where(inside, picked, target_logit)
        tile_max = tile.amax(1)
        # Rank: count logits above the target's before the in-place exp below, using the tile's own target value
        # where it holds it (the target never counts itself; ties do not count). Selective: only rows with a logit
        # above the target in this tile and not yet at the clip are compared (a well-predicted token has none), a few
        # percent of the tile instead of a full pass (bench/RSR.md: a full pass added ~25% to the head on a CPU).
        threshold = picked if ahead is None else torch.where(inside, picked, ahead)
        if selective:
            counted = ((tile_max > threshold) & (higher < RANK_CLIP - 1)).nonzero()[:, 0]  # a host sync
            higher.index_add_(0, counted, (tile[counted] > threshold[counted, None]).sum(1))
        else:  # counts past the clip are clipped below
            higher.add_((tile > threshold[:, None]).sum(1))
        new_peak = torch.maximum(peak, tile_max)
        total.mul_(torch.exp(peak - new_peak).double())  # rescale the running sum to the new maximum
        total.add_(tile.sub_(new_peak[:, None]).exp_().sum(1).double())  # in place: no second tile
        peak = new_peak
    return peak.double() + total.log() - target_logit.double(), higher.add_(1).clamp_(max=RANK_CLIP)


def response_nll(
    model: Any,
    sequences: Sequence[Rendered],
    *,
    pad_id: int,
    batch_tokens: int = 8192,
    max_rows: int | None = None,
    logits_mb: int = 256,
) -> tuple[list[float], list[int], list[int]]:
    """Summed NLL, summed clipped target rank and token count of each sequence's response tokens (``ids[start:]``).

    The first token of a sequence has no context and is never scored. Sequences are grouped by
    :func:`~car_hf.core.batching.model_batches`; results come back in input order.

    The backbone runs per micro-batch; the hidden states that predict response tokens are queued, and the LM head
    runs on full chunks of rows taken across micro-batches (so short sequences do not make small, slow head GEMMs),
    tile by tile of the vocabulary into one reused fp32 buffer of at most ``logits_mb``. Each row's NLL is
    ``max + log(sum(exp(logits - max))) - logits[target]``, the sum accumulated over tiles with an online rescale;
    the rank counts, in the same tiles, the logits above the target's.

    On a GPU the host never waits for the device inside the loop: index tensors are built on the host and copied
    without blocking (:func:`~car_hf.core.batching.to_device`), results stay on the device, and the one transfer back is
    at the end (the model's own forward may add its own, e.g. to inspect an attention mask).
    """
    device = next(model.parameters()).device
    _check_head(model, device)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    block = min(_VOCAB_BLOCK, vocab)
    budget = max(1, logits_mb * 2**20 // 4)  # fp32 logits held at once
    # A plain head is tiled [rows, block]; any other head module computes whole rows of the vocabulary.
    head_rows = max(1, min(_HEAD_ROWS, budget // (block if type(head) is torch.nn.Linear else vocab)))
    counts = [max(0, len(s.ids) - max(s.start, 1)) for s in sequences]
    totals = torch.zeros(len(sequences), dtype=torch.float64, device=device)
    rank_totals = torch.zeros(len(sequences), dtype=torch.int64, device=device)
    queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (hidden rows, targets, sequence index)
    queued = 0
    buffer: torch.Tensor | None = None

    def run_head(final: bool) -> None:
        nonlocal queue, queued, buffer
        if len(queue) == 1:
            hidden, targets, owner = queue[0]
        else:
            hidden, targets, owner = (torch.cat([q[k] for q in queue]) for k in range(3))
        stop = queued if final else queued - queued % head_rows
        if buffer is None or buffer.shape[0] < min(head_rows, stop):
            buffer = torch.empty((min(head_rows, stop), block), dtype=torch.float32, device=device)
        for lo in range(0, stop, head_rows):
            hi = min(lo + head_rows, stop)
            nll, rank = _head_scores(model, hidden[lo:hi], targets[lo:hi], block, buffer)
            totals.index_add_(0, owner[lo:hi], nll)
            rank_totals.index_add_(0, owner[lo:hi], rank)
        queue = [(hidden[stop:], targets[stop:], owner[stop:])] if stop < queued else []
        queued -= stop

    with torch.inference_mode():
        # Sequences with no response token to score are left out of the batches (their total stays 0).
        scored = [s.ids if n > 0 else [] for s, n in zip(sequences, counts)]
        for members, input_ids, attention_mask in model_batches(
            scored, pad_id, device, batch_tokens=batch_tokens, max_rows=max_rows
        ):
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            # Per scored position: batch row, position, target token, sequence index: one host-to-device copy.
            index: list[list[int]] = [[], [], [], []]
            for row, i in enumerate(members):
                ids = sequences[i].ids
                first = max(sequences[i].start, 1) - 1  # hidden state at p predicts token p + 1
                n = len(ids) - 1 - first
                index[0] += [row] * n
                index[1] += range(first, len(ids) - 1)
                index[2] += ids[first + 1 :]
                index[3] += [i] * n
            row_t, position_t, target_t, owner_t = to_device(torch.tensor(index, dtype=torch.long), device)
            queue.append((hidden[row_t, position_t], target_t, owner_t))
            queued += len(index[0])
            del hidden
            if queued >= head_rows:
                run_head(final=False)
        if queued:
            run_head(final=True)
    return totals.tolist(), rank_totals.tolist(), counts


class BaseLossScorer(ModelTransform):
    """``Dataset.map(..., batched=True)`` transform adding base-model loss columns.

    Built by :func:`add_base_loss`; see there for the options. Pickles (and so hashes) as its
    recipe, never as weights.
    """

    kind = "causal_lm"

    def __init__(self, model: Any, *, logits_mb: int = 256, **options: Any):
        super().__init__(model, **options)
        self.logits_mb = logits_mb

    @property
    def ifd(self) -> bool:
        return self.config.ifd

    def extra_options(self) -> dict[str, Any]:
        return {"logits_mb": self.logits_mb}

    def score_features(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        """The columns :meth:`score` adds and their types (a 0-row dataset gets them: :func:`car_hf.core.data.map_scores`)."""
        from datasets import Value

        names = ["base_loss", "base_loss_tokens", "base_loss_truncated", "base_rank"]
        names += ["base_loss_unconditioned", "ifd"] if self.ifd else []
        types = {"base_loss_tokens": "int64", "base_loss_truncated": "bool"}
        return {name: Value(types.get(name, "float64")) for name in names}

    def token_counts(self, batch: Mapping[str, Sequence[Any]], *args: Any) -> list[int]:
        """The ``base_loss_tokens`` :meth:`score` gives these rows, from the tokenizer and template alone (no loss pass):
        what a pre-scored student's columns are checked against."""
        examples, rank = self.examples(batch, *args)
        _, tokenizer = self.load(rank)
        rendered = [self.render(e, tokenizer) if e is not None else Rendered([], 0, False) for e in examples]
        return [max(0, len(r.ids) - max(r.start, 1)) for r in rendered]

    def score(self, model: Any, tokenizer: Any, examples: list[Example | None]) -> dict[str, list[Any]]:
        rendered = [self.render(e, tokenizer) if e is not None else Rendered([], 0, False) for e in examples]
        sequences = list(rendered)
        if self.ifd:
            # The response alone: the same response tokens after a single start token, so both
            # losses cover identical targets (Cherry-LLM's IFD denominator).
            context = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            sequences += [Rendered([context] + r.ids[r.start :], 1, r.truncated) for r in rendered]
        sums, ranks, counts = response_nll(
            model, sequences, pad_id=tokenizer.pad_token_id, batch_tokens=self.config.batch_tokens,
            max_rows=self.config.max_rows, logits_mb=self.logits_mb,
        )
        n = len(rendered)
        losses = [s / c if c else math.nan for s, c in zip(sums[:n], counts[:n])]
        out: dict[str, list[Any]] = {
            "base_loss": losses,
            "base_loss_tokens": counts[:n],
            "base_loss_truncated": [r.truncated for r in rendered],
            "base_rank": [r / c if c else math.nan for r, c in zip(ranks[:n], counts[:n])],
        }
        if self.ifd:
            alone = [s / c if c else math.nan for s, c in zip(sums[n:], counts[n:])]
            out["base_loss_unconditioned"] = alone
            out["ifd"] = [a / b if b > 0 else math.nan for a, b in zip(losses, alone)]
        return out


def add_base_loss(model: Any, **options: Any) -> BaseLossScorer:
    """A ``Dataset.map(fn, batched=True)`` transform adding the base model's loss on each response.

    Args:
        model: the base model to be tuned: a Hub id, a local folder, a ``.gguf`` file, or a loaded
            ``(model, tokenizer)`` pair.
        ifd: also add ``base_loss_unconditioned`` (the same response tokens after only a start
            token) and ``ifd`` = ``base_loss / base_loss_unconditioned`` (Cherry-LLM's IFD).
        max_length: token cap (default 2048); longer examples are cut on the right, as TRL does,
            and flagged in ``base_loss_truncated``; if nothing of the response is left the loss is
            NaN with ``base_loss_tokens == 0``.
        batch_tokens: padded tokens per micro-batch (memory bound); ``max_rows`` caps rows too.
        logits_mb: memory for one chunk of fp32 logits at response positions.
        dtype, device: ``"auto"`` = fp32 on CPU, bf16 on GPUs that support it; device defaults to
            ``cuda:{rank}`` under ``with_rank=True``, else the first GPU or the CPU.
        plain_template: prompt template for base models without a chat template.
        empty_response: ``"nan"`` (default: NaN loss, 0 tokens — an empty answer is not evidence of
            compatibility), ``"score"`` (score the end-of-turn tokens alone) or ``"raise"``.
        messages, prompt, response: column names, when the layout is not detected.
        config: a :class:`~car_hf.CARConfig` holding these options (keywords override it).

    Adds ``base_loss`` (float, nats/token), ``base_loss_tokens`` (int), ``base_loss_truncated`` (bool) and
    ``base_rank`` (float: the mean rank of the response tokens among the vocabulary, each clipped at
    :data:`RANK_CLIP`; NaN with the loss).
    Pass ``with_indices=True`` to ``map`` for dataset row numbers in error messages.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!"}])
        >>> ds.map(add_base_loss("google/gemma-3-270m", ifd=True), batched=True)  # doctest: +SKIP

    Several students (a list, or a mapping ``{label: model}``): a :class:`~car_hf.core.transform.StudentTransforms`
    writing each student's columns as ``base_loss@<label>`` ... (:mod:`car_hf.core.students`), each rendered with its
    own chat template; its ``.map(ds)`` scores one student at a time over every row (a list of one is that one).

        >>> losses = add_base_loss(["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m"])
        >>> losses.labels
        ['SmolLM2-135M-Instruct', 'gemma-3-270m']
    """
    if isinstance(model, Mapping) or (is_student_list(model) and len(model) != 1):
        return student_losses(model, **options)
    return BaseLossScorer(model[0] if is_student_list(model) else model, **options)


def student_losses(models: Any, **options: Any) -> StudentTransforms:
    """One :class:`BaseLossScorer` per student, each with the options and its own model as ``base_model`` (so that a
    student's cache identity is the same whatever the other students), as :class:`StudentPart` s."""
    parts = []
    for label, model in zip(student_labels(models), student_models(models)):
        scorer = BaseLossScorer(model, **{**options, "base_model": model if isinstance(model, str) else None})
        parts.append(StudentPart(scorer, label))
    return StudentTransforms(parts)
