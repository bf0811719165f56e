"""Length-sorted, token-budget micro-batches: the one batching path of every car_hf scorer.

Padding wastes compute in proportion to the length spread inside a batch. Sorting by length and
cutting batches so that ``longest × rows ≤ max_tokens`` keeps the spread small and the memory of a
micro-batch bounded, whatever the mix of lengths. Callers scatter the results back by index, so
the output order is always the input order.

Example:
    >>> token_budget_batches([5, 100, 7, 98], max_tokens=200)
    [[1, 3], [2, 0]]
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

# On CPU, micro-batches hold at most this many padded tokens, whatever ``batch_tokens`` allows. Measured with
# bench/score_bench.py's rows on 2-core AVX2 and AVX-512 CPUs: 1024-token batches cost 0.6-0.7x of 8192-token ones
# and about the same as one sequence at a time (activations stay in cache; CPU GEMMs gain nothing from more rows).
CPU_BATCH_TOKENS = 1024


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int | None = None
) -> list[list[int]]:
    """Group indices of ``lengths`` into micro-batches, longest first.

    Each batch satisfies ``max(length) * len(batch) <= max_tokens`` (a single sequence longer than
    the budget gets a batch of its own) and ``len(batch) <= max_rows`` when given. Longest first so
    that an out-of-memory error, if any, happens at the first step rather than after an hour.
    Ties keep input order, so the grouping is deterministic.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted descending: the first row of a batch is its longest.
        width = max(lengths[current[0]] if current else lengths[i], 1)
        full = max_rows is not None and len(current) >= max_rows
        if current and (width * (len(current) + 1) > max_tokens or full):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU ``tensor`` on ``device``, without making the host wait on CUDA: a copy from pageable memory waits for
    every kernel queued before it (a host sync), a non-blocking one from pinned memory does not (torch keeps the
    pinned block until the copy is done).

    Example:
        >>> to_device(torch.tensor([1, 2]), "cpu").tolist()
        [1, 2]
    """
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Right-pad token id lists into ``(input_ids, attention_mask)`` long tensors.

    Right padding keeps every real token at the position it has alone, so with a causal mask the
    batched hidden states equal the unbatched ones (left padding would shift rotary positions).
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return to_device(input_ids, device), to_device(attention_mask, device)


def model_batches(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    *,
    batch_tokens: int,
    max_rows: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """Yield ``(indices, input_ids, attention_mask)`` micro-batches of the non-empty ``sequences``.

    The one batching path of the scorers: :func:`token_budget_batches` (budget capped at
    :data:`CPU_BATCH_TOKENS` on CPU), then :func:`pad_right`. A single-row batch has nothing padded, so its mask
    is ``None``, which lets the model take its plain causal attention path. Empty sequences are skipped: callers
    give them their documented empty value.
    """
    budget = min(batch_tokens, CPU_BATCH_TOKENS) if torch.device(device).type == "cpu" else batch_tokens
    todo = [i for i, s in enumerate(sequences) if len(s)]
    for group in token_budget_batches([len(sequences[i]) for i in todo], budget, max_rows):
        members = [todo[g] for g in group]
        input_ids, attention_mask = pad_right([sequences[i] for i in members], pad_id, device)
        yield members, input_ids, (None if len(members) == 1 else attention_mask)
