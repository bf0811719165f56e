"""The ``transformers`` engine: batched ``model.generate`` with left padding, CPU or GPU.

Prompts are rendered with the teacher's chat template, sorted by length and cut into token-budget batches
(:func:`car_hf.core.batching.token_budget_batches`, the one batching path; a row costs its prompt plus
``max_new_tokens``, so the budget bounds the KV cache), left-padded with an attention mask. ``generate`` derives
position ids from the mask (``cumsum - 1``), so a padded row sees the positions it has alone: greedy batched
output equals greedy one-at-a-time output token for token (tested on a tiny Llama in fp32, and measured on
SmolLM2-135M by ``bench/generate_bench.py``; in lower precision, or where two logits nearly tie, padding can
change rounding and flip a token, as in any batched inference).

Unlike scoring's, the budget has no CPU cap: each decoding step reads every weight whatever the number of
rows, so more rows are nearly free; bench/GENERATE.md has the measured speed-ups by budget.

Decoding is exactly what :class:`~car_hf.generation.teacher.TeacherConfig` says, whatever the teacher's own
``generation_config.json`` suggests: greedy at temperature 0, else temperature and top-p sampling with top-k,
min-p and repetition penalties off (vLLM's and the OpenAI API's defaults). Sampling is seeded per batch with a
seed derived from ``generation_seed`` and the batch's token ids (the global RNG is restored afterwards): the
same rows, batched the same way (same data order, ``generation_batch_tokens``, map batch size) on the same
device and library versions, give the same text.

Example:
    >>> ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from car_hf.core.batching import token_budget_batches
from car_hf.generation.teacher import TeacherConfig
from car_hf.generation.engines.base import Generation, Messages, check_chat_template, check_context, finish, prompt_ids, stop_token_ids
from car_hf.generation.engines.decoding import generate_rows

def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Left-pad token id lists into ``(input_ids, attention_mask)``: every prompt ends where generation starts."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq):] = 1
    return input_ids.to(device), attention_mask.to(device)


def batch_seed(seed: int, batch: Sequence[Sequence[int]]) -> int:
    """A sampling seed for one batch: ``seed`` and the batch's token ids, so it does not depend on batch order."""
    digest = hashlib.blake2b(repr((seed, [list(ids) for ids in batch])).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds must fit in an int64


class TransformersEngine:
    """Generate with a loaded ``(model, tokenizer)``; see the module docstring."""

    name: ClassVar[str] = "transformers"

    def __init__(self, model: Any, tokenizer: Any, config: TeacherConfig, teacher: str):
        from transformers import GenerationConfig

        self.model, self.tokenizer, self.config, self.teacher = model, tokenizer, config, teacher
        self.template = config.template_text()
        check_chat_template(tokenizer, self.template, teacher)
        self.stops = stop_token_ids(tokenizer, self.template, model.generation_config.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        sampling = {} if config.greedy else {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0,
                                             "min_p": 0.0, "typical_p": 1.0}
        # Every knob that applies is set: fields left None would be filled from the teacher's generation_config.json.
        self.generation_config = GenerationConfig(
            max_new_tokens=config.max_new_tokens, min_new_tokens=0, do_sample=not config.greedy, num_beams=1,
            repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=self.stops, pad_token_id=self.pad_id,
            **sampling,
        )
        self.budget = config.generation_batch_tokens

    def generate(self, prompts: Sequence[Messages], rows: Sequence[Any]) -> list[Generation]:
        ids = [prompt_ids(self.tokenizer, p, self.template, row, self.teacher) for p, row in zip(prompts, rows)]
        context = getattr(self.model.config, "max_position_embeddings", None)
        check_context(ids, rows, self.config.max_new_tokens, context, self.teacher,
                      "the model's max_position_embeddings")
        results: list[Generation | None] = [None] * len(ids)
        lengths = [len(i) + self.config.max_new_tokens for i in ids]
        for group in token_budget_batches(lengths, self.budget):
            for i, generation in zip(group, self._generate_batch([ids[i] for i in group])):
                results[i] = generation
        return results  # type: ignore[return-value]  # every index is in exactly one group

    def _generate_batch(self, batch: list[list[int]]) -> list[Generation]:
        device = self.model.device
        input_ids, attention_mask = pad_left(batch, self.pad_id, device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(batch_seed(self.config.generation_seed, batch))
            new = generate_rows(self.model, input_ids, attention_mask, self.generation_config, self.stops)
        return [finish(row, self.stops, self.tokenizer) for row in new]  # finished rows leave the batch early
