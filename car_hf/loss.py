"""Base-model loss of responses: ``add_base_loss`` and the one loss path behind it.

``base_loss`` is the mean negative log-likelihood (nats per token) of the response tokens under the
base model: the assistant turn as the base model's chat template renders it, end-of-turn token
included, prompt masked — the tokens TRL's ``SFTTrainer`` trains on with completion-only loss.

The engine never builds full-vocabulary logits for prompt tokens: it runs the backbone, gathers the
hidden states whose *next* token is a response token, and applies the LM head only there, in chunks
of rows sized so that one chunk of fp32 logits stays under ``logits_mb`` (Gemma-3's 262k vocabulary
makes full logits of one 2k-token example 2 GB).

Example:
    >>> from datasets import Dataset
    >>> from car_hf import add_base_loss
    >>> ds = Dataset.from_list([{"instruction": "Say hi.", "response": "Hi!"}])
    >>> scored = ds.map(add_base_loss("google/gemma-3-270m"), batched=True)  # doctest: +SKIP
    >>> scored[0]["base_loss"], scored[0]["base_loss_tokens"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .batching import pad_right, token_budget_batches
from .formats import Example, Rendered
from .transform import DEFAULT_BATCH_TOKENS, ModelTransform


# Models whose head output was checked against model(...).logits in this process (by id()).
_HEAD_CHECKED: set[int] = set()


def _head_logits(model: Any, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The LM head on ``hidden`` [rows, H] with the model's own logit post-processing, in fp32.

    With ``out`` (a contiguous fp32 [rows, vocab] buffer) a plain bias-free fp32 ``nn.Linear`` head writes into
    it: no fresh allocation (and page faults) per chunk. Other heads return a new tensor.
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    weight = getattr(head, "weight", None)
    if (
        out is not None and type(head) is torch.nn.Linear and head.bias is None
        and weight.dtype == torch.float32 and hidden.dtype == torch.float32
    ):
        logits = torch.mm(hidden, weight.t(), out=out)
        if softcap is not None:  # Gemma-2/3 squash logits with tanh before the loss.
            logits.div_(softcap).tanh_().mul_(softcap)
        return logits
    logits = head(hidden)
    if softcap is not None:  # Gemma-2/3 squash logits with tanh before the loss.
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def _check_head(model: Any, device: torch.device) -> None:
    """Fail fast if this architecture post-processes logits in a way :func:`_head_logits` misses."""
    if id(model) in _HEAD_CHECKED:
        return
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.arange(1, 9, device=device).remainder(vocab).unsqueeze(0)
    reference = model(input_ids=ids, use_cache=False).logits[0].float()
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
    if not torch.allclose(_head_logits(model, hidden), reference, rtol=1e-3, atol=1e-3):
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits in a way car_hf does not reproduce; "
            "please open an issue with the model id"
        )
    _HEAD_CHECKED.add(id(model))


# CPU micro-batches hold at most this many padded tokens, whatever ``batch_tokens`` allows. Measured with
# bench/score_bench.py's rows (CPU seconds, 1 thread, so other processes on the shared machine do not blur it):
# 1024-token batches cost 0.66x (Gemma-3-270m) / 0.71x (SmolLM2-135M) of 8192-token ones and within 2% of one
# sequence at a time: activations stay in cache, and CPU GEMMs gain nothing from more rows.
_CPU_BATCH_TOKENS = 1024
# Rows per LM-head chunk: enough rows that the [rows, H] x [H, vocab] GEMM re-uses each weight it streams (256),
# or more while one chunk of fp32 logits stays under 64 MB; never above ``logits_mb``.
_HEAD_MIN_ROWS = 256
_HEAD_CHUNK_BYTES = 64 * 2**20


def response_nll(
    model: Any,
    sequences: Sequence[Rendered],
    *,
    pad_id: int,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_rows: int | None = None,
    logits_mb: int = 256,
) -> tuple[list[float], list[int]]:
    """Summed NLL and token count of each sequence's response tokens (``ids[start:]``).

    The first token of a sequence has no context and is never scored. Sequences are grouped by
    :func:`~car_hf.batching.token_budget_batches` (on CPU, micro-batches of at most ``_CPU_BATCH_TOKENS``);
    results come back in input order.

    The backbone runs per micro-batch; the hidden states that predict response tokens are queued, and the LM head
    runs on full chunks of rows taken across micro-batches (so short sequences do not make small, slow head GEMMs),
    writing into one reused fp32 buffer. Each row's NLL is ``max + log(sum(exp(logits - max))) - logits[target]``,
    computed in place in that buffer (``cross_entropy`` would write a second [rows, vocab] tensor).
    """
    device = next(model.parameters()).device
    _check_head(model, device)
    vocab = model.get_output_embeddings().weight.shape[0]
    row_bytes = 4 * vocab
    head_rows = max(_HEAD_MIN_ROWS, _HEAD_CHUNK_BYTES // row_bytes)
    head_rows = max(1, min(head_rows, logits_mb * 2**20 // row_bytes))
    budget = min(batch_tokens, _CPU_BATCH_TOKENS) if device.type == "cpu" else batch_tokens
    counts = [max(0, len(s.ids) - max(s.start, 1)) for s in sequences]
    todo = [i for i, n in enumerate(counts) if n > 0]
    lengths = [len(sequences[i].ids) for i in todo]
    totals = torch.zeros(len(sequences), dtype=torch.float64, device=device)
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
        for lo in range(0, stop, head_rows):
            hi = min(lo + head_rows, stop)
            if buffer is None or buffer.shape[0] < hi - lo:
                buffer = torch.empty((hi - lo, vocab), dtype=torch.float32, device=device)
            logits = _head_logits(model, hidden[lo:hi], out=buffer[: hi - lo])
            target = logits.gather(1, targets[lo:hi, None])[:, 0]
            peak = logits.amax(1, keepdim=True)
            logits.sub_(peak).exp_()  # in place: no second [rows, vocab] tensor
            nll = peak[:, 0] + logits.sum(1).log() - target
            totals.index_add_(0, owner[lo:hi], nll.double())
        queue = [(hidden[stop:], targets[stop:], owner[stop:])] if stop < queued else []
        queued -= stop

    with torch.inference_mode():
        for group in token_budget_batches(lengths, budget, max_rows):
            members = [todo[g] for g in group]
            input_ids, attention_mask = pad_right([sequences[i].ids for i in members], pad_id, device)
            if len(members) == 1:
                attention_mask = None  # nothing padded: lets the model take its plain causal attention path
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            owner, position = [], []
            for row, i in enumerate(members):
                first = max(sequences[i].start, 1) - 1  # hidden state at p predicts token p + 1
                span = range(first, len(sequences[i].ids) - 1)
                owner.extend([row] * len(span))
                position.extend(span)
            row_t = torch.as_tensor(owner, device=device)
            position_t = torch.as_tensor(position, device=device)
            member_t = torch.as_tensor(members, device=device)
            queue.append((hidden[row_t, position_t], input_ids[row_t, position_t + 1], member_t[row_t]))
            queued += len(owner)
            del hidden
            if queued >= head_rows:
                run_head(final=False)
        if queued:
            run_head(final=True)
    return totals.tolist(), counts


class BaseLossScorer(ModelTransform):
    """``Dataset.map(..., batched=True)`` transform adding base-model loss columns.

    Built by :func:`add_base_loss`; see there for the options. Pickles (and so hashes) as its
    recipe, never as weights.
    """

    kind = "causal_lm"

    def __init__(self, model: Any, *, ifd: bool = False, logits_mb: int = 256, **options: Any):
        super().__init__(model, **options)
        self.ifd = ifd
        self.logits_mb = logits_mb

    def extra_options(self) -> dict[str, Any]:
        return {"ifd": self.ifd, "logits_mb": self.logits_mb}

    def score(self, model: Any, tokenizer: Any, examples: list[Example | None]) -> dict[str, list[Any]]:
        rendered = [self.render(e, tokenizer) if e is not None else Rendered([], 0, False) for e in examples]
        sequences = list(rendered)
        if self.ifd:
            # The response alone: the same response tokens after a single start token, so both
            # losses cover identical targets (Cherry-LLM's IFD denominator).
            context = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            sequences += [Rendered([context] + r.ids[r.start :], 1, r.truncated) for r in rendered]
        sums, counts = response_nll(
            model, sequences, pad_id=tokenizer.pad_token_id, batch_tokens=self.options["batch_tokens"],
            max_rows=self.options["max_rows"], logits_mb=self.logits_mb,
        )
        n = len(rendered)
        losses = [s / c if c else math.nan for s, c in zip(sums[:n], counts[:n])]
        out: dict[str, list[Any]] = {
            "base_loss": losses,
            "base_loss_tokens": counts[:n],
            "base_loss_truncated": [r.truncated for r in rendered],
        }
        if self.ifd:
            alone = [s / c if c else math.nan for s, c in zip(sums[n:], counts[n:])]
            out["base_loss_unconditioned"] = alone
            out["ifd"] = [a / b if b > 0 else math.nan for a, b in zip(losses, alone)]
        return out


def add_base_loss(model: Any, *, ifd: bool = False, **options: Any) -> BaseLossScorer:
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

    Adds ``base_loss`` (float, nats/token), ``base_loss_tokens`` (int), ``base_loss_truncated`` (bool).
    Pass ``with_indices=True`` to ``map`` for dataset row numbers in error messages.

    Example:
        >>> ds.map(add_base_loss("google/gemma-3-270m", ifd=True), batched=True)  # doctest: +SKIP
    """
    return BaseLossScorer(model, ifd=ifd, **options)
