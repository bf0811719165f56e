"""What car_hf is measured against, and the work counted: one copy for every benchmark of bench/.

- :func:`per_example_losses`: one forward per example, the model's own loss over the labels with the prompt masked,
  full logits (Cherry-LLM's IFD script, data-juicer's perplexity operator);
- :func:`padded_batch_losses`: dataset-order padded batches, full logits, masked cross-entropy (``evaluate``'s
  perplexity metric);
- :func:`forward_flops` (with :func:`non_embedding_params`): the useful work of a scoring pass, the same for every
  approach; :func:`matmul_rate`: the dense matmul rate it is divided by (the floor, or % of peak).

Example:
    >>> import torch, tiny
    >>> from car_hf.core.formats import Rendered
    >>> model = tiny.build_causal_lm(tiny.build_tokenizer()).eval()
    >>> seqs = [Rendered([5, 9, 14, 3, 7], 2, False), Rendered([8, 4, 6], 1, False)]
    >>> means, counts = per_example_losses(torch, model, seqs)
    >>> sums, batched = padded_batch_losses(torch, model, seqs, pad_id=0)
    >>> counts, batched, all(abs(m - s / n) < 1e-5 for m, s, n in zip(means, sums, counts))
    ([3, 2], [3, 2], True)
    >>> forward_flops(model, seqs) == 2 * non_embedding_params(model) * 8 + 2 * 64 * model.config.vocab_size * 5
    True
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from common import timed


def matmul_rate(torch: Any, n: int, dtype: Any = None, device: Any = "cpu", repeats: int = 5,
                warmup: int = 1) -> tuple[float, float]:
    """Median FLOP/s of ``n``^3 matmuls in ``dtype`` on ``device`` after ``warmup`` ones: (by wall clock, by this
    process's CPU time)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    runs = [timed(lambda: a @ b, torch.device(device)) for _ in range(repeats)]
    flops = 2 * n**3
    return (flops / statistics.median(r.seconds for r in runs),
            flops / statistics.median(max(r.cpu_seconds, 1e-3) for r in runs))


def non_embedding_params(model: Any) -> int:
    """Parameters but the input embeddings (and an untied output head): the dense FLOPs' rule."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    total -= embed.numel()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.data_ptr() != embed.data_ptr():
        total -= head.weight.numel()
    return total


def forward_flops(model: Any, seqs: Sequence[Any], attention: bool = False, reward: bool = False) -> int:
    """Counted forward FLOPs of ``seqs`` (``Rendered``: ids and response start): 2 x non-embedding parameters x all
    tokens, plus the LM head 2 x hidden x vocabulary x scored tokens (a reward head: 2 x hidden per sequence), plus
    with ``attention`` the causal attention 2 x layers x hidden x length^2."""
    text = model.config.get_text_config()
    flops = 2 * non_embedding_params(model) * sum(len(s.ids) for s in seqs)
    if reward:
        flops += 2 * text.hidden_size * len(seqs)
    else:
        flops += 2 * text.hidden_size * text.vocab_size * sum(len(s.ids) - max(s.start, 1) for s in seqs)
    if attention:
        flops += 2 * text.num_hidden_layers * text.hidden_size * sum(len(s.ids) ** 2 for s in seqs)
    return flops


def per_example_losses(torch: Any, model: Any, seqs: Sequence[Any]) -> tuple[list[float], list[int]]:
    """(mean NLL, response tokens) of each sequence, one forward each: the model's own loss over the labels with
    the prompt masked, full logits (Cherry-LLM's IFD script, data-juicer's perplexity operator)."""
    means, counts = [], []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s.ids], device=model.device)
            labels = ids.clone()
            labels[:, : s.start] = -100
            means.append(float(model(input_ids=ids, labels=labels).loss))
            counts.append(len(s.ids) - s.start)
    return means, counts


def padded_batch_losses(torch: Any, model: Any, seqs: Sequence[Any], pad_id: int,
                        batch: int = 8) -> tuple[list[float], list[int]]:
    """(summed NLL, response tokens) of each sequence in dataset-order padded batches of ``batch``: full logits,
    shifted, cross-entropy masked to the response (``evaluate``'s perplexity metric; each batch's tensors are freed
    before the next, ``evaluate``'s loop keeps them alive, so its real peak is higher)."""
    sums: list[float] = []
    counts: list[int] = []
    with torch.inference_mode():
        for k in range(0, len(seqs), batch):
            part = seqs[k : k + batch]
            width = max(len(s.ids) for s in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            attention, response = torch.zeros_like(ids), torch.zeros_like(ids)
            for row, s in enumerate(part):
                ids[row, : len(s.ids)] = torch.tensor(s.ids)
                attention[row, : len(s.ids)] = 1
                response[row, s.start : len(s.ids)] = 1
            ids, attention, response = ids.to(model.device), attention.to(model.device), response.to(model.device)
            logits = model(input_ids=ids, attention_mask=attention).logits
            shifted = logits[:, :-1].float().contiguous()  # as evaluate's: the full logits stay alive beside it
            nll = torch.nn.functional.cross_entropy(shifted.transpose(1, 2), ids[:, 1:], reduction="none")
            mask = response[:, 1:]
            sums += (nll * mask).sum(1).tolist()
            counts += [int(c) for c in mask.sum(1).tolist()]
            del logits, shifted, nll
    return sums, counts
