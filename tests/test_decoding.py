"""car_hf.generation.engines.decoding: finished rows leave the batch, greedy output unchanged."""

from __future__ import annotations

import pytest
import tiny
import torch
from transformers import GenerationConfig

from car_hf.generation.engines.base import finish, prompt_ids, stop_token_ids
from car_hf.generation.engines.decoding import generate_rows
from car_hf.generation.engines.transformers_engine import pad_left
from car_hf.generation.generate import read_prompt

QUESTIONS = ["How do I cook rice?", "Why is the sky blue today?", "Hi", "Tips to save money?",
             "Write a short note about the quiet harbor and the library across the bridge, please."]
MAX_NEW = 20


@pytest.fixture(scope="module")
def setup(tokenizer):
    """The tiny Llama with its end-of-turn logit raised on one token of the first answer: some greedy answers
    stop within a few tokens, others run to MAX_NEW."""
    model = tiny.build_causal_lm(tokenizer)
    stops = stop_token_ids(tokenizer, None, model.generation_config.eos_token_id)
    prompts = [prompt_ids(tokenizer, read_prompt(q, row=0, column="q"), None, 0, "t") for q in QUESTIONS]
    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stops, pad_token_id=0)
    answers = [alone(model, ids, config) for ids in prompts]
    # The token that comes earliest in most answers but is absent from one: made the end of turn, it ends those
    # answers early while that one runs to MAX_NEW.
    candidates = {t for a in answers for t in a
                  if sum(t in b for b in answers) >= 3 and any(t not in b for b in answers)}
    token = min(candidates, key=lambda t: sum(a.index(t) if t in a else MAX_NEW for a in answers))
    with torch.no_grad():
        model.lm_head.weight[max(stops)] = model.lm_head.weight[token] * 1.05
    return model, stops, prompts, config


def alone(model, ids, config):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=config)
    return out[0, len(ids):].tolist()


def test_finished_rows_leave_the_batch_and_greedy_output_is_unchanged(setup, tokenizer):
    model, stops, prompts, config = setup
    expected = [list(finish(alone(model, ids, config), stops, tokenizer).token_ids) for ids in prompts]
    lengths = [len(e) for e in expected]
    assert min(lengths) < 8 and max(lengths) == MAX_NEW  # some stop early, some run to the limit

    rows_per_step: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: rows_per_step.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        input_ids, mask = pad_left(prompts, 0)
        got = generate_rows(model, input_ids, mask, config, stops, segment_tokens=4)
    finally:
        hook.remove()
    assert got == expected
    # Plain generate computes every row at every step; here a row costs only the segments it is still in.
    segments = [-(-n // 4) * 4 for n in lengths]
    assert sum(rows_per_step) == pytest.approx(sum(segments), abs=len(prompts))
    assert sum(rows_per_step) < len(prompts) * MAX_NEW * 0.8
    assert rows_per_step[-1] == sum(n == MAX_NEW for n in lengths)  # only the unfinished rows reach the end
