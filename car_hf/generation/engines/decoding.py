"""Batched decoding in which finished rows stop costing work.

``model.generate`` on a batch keeps computing every row until the last one stops: a row that ends its turn after
11 tokens still pays for all the tokens a looping neighbour writes up to ``max_new_tokens``. :func:`generate_rows`
decodes in segments of ``segment_tokens``: after each segment the rows that produced a stop token are taken out
of the batch (their key/value cache rows too, ``Cache.batch_select_indices``) and the others continue from the
cache where they were, so the work left is only the unfinished rows'. The batch ends when every row has stopped
or reached ``max_new_tokens``.

Greedy output is the same as one uninterrupted ``generate`` (the continuation feeds the next token with the cache,
exactly as a decoding step does; tested token for token against one-at-a-time generation). Sampling is seeded by
the caller once per batch and stays reproducible, but dropping rows changes which random numbers later rows
draw, so sampled text differs from an uninterrupted ``generate``'s (another valid sample).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

# transformers renamed generate's past_key_values to cache (5.2x); older releases (the GPU machine's 5.17) use the old
# name. The output's field tells which one this release speaks.
_CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)} else "past_key_values"

SEGMENT_TOKENS = 32
"""Tokens decoded between two removals of finished rows: small enough that a finished row costs little, large
enough that the per-call overhead of ``generate`` stays negligible next to the decoding steps."""


def generate_rows(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: Any,
                  stops: Sequence[int], segment_tokens: int = SEGMENT_TOKENS) -> list[list[int]]:
    """Each row's generated token ids (up to and including its first stop token, else ``max_new_tokens`` of them),
    in input order, decoding only the unfinished rows after each segment (see the module docstring)."""
    total = generation_config.max_new_tokens
    stop_set = set(stops)
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    active = list(range(input_ids.shape[0]))  # input rows still decoding, in batch order
    cache, produced = None, 0
    segment = copy.deepcopy(generation_config)
    segment.return_dict_in_generate = True
    while active and produced < total:
        segment.max_new_tokens = min(segment_tokens, total - produced)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=segment,
                                **{_CACHE: cache})
        new = output.sequences[:, input_ids.shape[1]:]
        produced += new.shape[1]
        keep = []
        for j, row in enumerate(active):
            tokens = new[j].tolist()
            end = next((k for k, t in enumerate(tokens) if t in stop_set), None)
            generated[row].extend(tokens if end is None else tokens[: end + 1])
            if end is None:
                keep.append(j)
        if not keep or produced >= total:
            break
        index = torch.tensor(keep, device=input_ids.device)
        cache = getattr(output, _CACHE)
        cache.batch_select_indices(index)
        input_ids = output.sequences[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], new.shape[1])],
                                   dim=1)[index]
        active = [active[j] for j in keep]
    return generated
