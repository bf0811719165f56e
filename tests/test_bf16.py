"""add_base_loss in bfloat16 on the CPU: the one loss path, exact where bf16 allows it, and the head check's tolerance.

Tolerances, and why:

* A bf16 model scored in one-row batches against the full-logits computation on the same bf16 model: 1e-5
  nats/token. Both use the same bf16 logits (the tiled head reproduces the model's own head; ``_check_head`` checks
  it), and only the log-sum-exp's summation order differs (fp32 tiles into fp64 sums vs one fp32 log-softmax).
* The bf16 model against the same weights in float32 (the bf16 weights upcast exactly, so only the arithmetic
  differs): each example's mean loss within 2u x (mean over its response tokens of max |logit|), u = 2^-8 (bf16's
  unit roundoff). Rounding the logits z to bf16 moves each z_i by at most u|z_i|, and a token's NLL,
  logsumexp(z) - z_target, by at most u(sum_i p_i |z_i| + |z_target|) <= 2u max_i |z_i| to first order. The
  backbone's own roundings are of the same relative size but spread over many sums that largely cancel: measured
  5-9x under the bound (largest differences: tiny Llama 4.7e-4, bounds >= 4.2e-3; tiny Gemma-3 with softcapping
  1.2e-2, bounds >= 5.7e-2).
"""

import copy
import math

import pytest
import torch
from datasets import Dataset

import tiny
from car_hf import add_base_loss
from car_hf.core import formats
from car_hf.scoring import loss
from car_hf.core.errors import ConfigError

UNIT_ROUNDOFF = 2.0**-8


def rendered_rows(tokenizer):
    rows = tiny.sample_rows(n_instructions=6, generators=3)
    layout = formats.detect_layout(list(rows[0].keys()))
    examples = [formats.row_example({k: [v] for k, v in row.items()}, 0, layout, i) for i, row in enumerate(rows)]
    return rows, [formats.render(e, tokenizer, max_length=2048) for e in examples]


def full_logits(model, rendered):
    """The model's own logits at the positions predicting response tokens, as float32, and the targets."""
    ids = torch.tensor([rendered.ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, rendered.start - 1 : -1].float()
    return logits, ids[0, rendered.start :]


@pytest.fixture(params=["llama", "gemma3"])
def bf16_and_fp32(request, tokenizer):
    """The same weights twice: rounded to bf16, and those bf16 values upcast to float32."""
    build = tiny.build_causal_lm if request.param == "llama" else tiny.build_gemma3_lm
    low = build(tokenizer).to(torch.bfloat16)
    return low, copy.deepcopy(low).to(torch.float32)


def test_bf16_loss_equals_full_logits_of_the_same_bf16_model(bf16_and_fp32, tokenizer):
    low, _ = bf16_and_fp32
    rows, rendered = rendered_rows(tokenizer)
    scored = Dataset.from_list(rows).map(add_base_loss((low, tokenizer), batch_tokens=1), batched=True)
    assert low.dtype == torch.bfloat16  # dtype="auto" leaves a loaded pair as it is
    for row, r in zip(scored, rendered):
        logits, targets = full_logits(low, r)
        nll = -torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets]
        assert row["base_loss"] == pytest.approx(float(nll.mean()), abs=1e-5)
        above = (logits > logits.gather(1, targets[:, None])).sum(1)
        assert row["base_rank"] == sum(min(1 + int(n), loss.RANK_CLIP) for n in above) / len(targets)


def test_bf16_loss_is_within_the_bound_of_bf16_rounding_of_the_fp32_loss(bf16_and_fp32, tokenizer):
    low, exact = bf16_and_fp32
    rows, rendered = rendered_rows(tokenizer)
    ds = Dataset.from_list(rows)
    in_bf16 = ds.map(add_base_loss((low, tokenizer)), batched=True)["base_loss"]
    in_fp32 = ds.map(add_base_loss((exact, tokenizer)), batched=True)["base_loss"]
    differences = []
    for a, b, r in zip(in_bf16, in_fp32, rendered):
        logits, _ = full_logits(exact, r)
        bound = 2 * UNIT_ROUNDOFF * float(logits.abs().amax(1).mean())
        assert math.isfinite(a) and abs(a - b) <= bound
        differences.append(abs(a - b))
    assert max(differences) > 1e-6  # the bf16 run computed in bf16 (not silently upcast)


def test_head_check_passes_a_bf16_head_and_catches_one_ulp_more(tokenizer, monkeypatch):
    """The tolerance is one unit in the last place of the head's dtype (bf16 2^-7): what two GEMMs of different
    shapes may differ by, while anything beyond (a missed logit offset or scale) fails. The tiny Llama's logits are
    under 1 in magnitude, so a shift of 3 x the tolerance exceeds rtol*|logit| + atol."""
    cpu, real = torch.device("cpu"), loss._softcap
    for dtype in (torch.bfloat16, torch.float32):
        model = tiny.build_causal_lm(tokenizer).to(dtype)
        tolerance = loss.head_tolerance(dtype)
        for shift, passes in ((0.0, True), (0.5 * tolerance, True), (3 * tolerance, False)):
            monkeypatch.setattr(loss, "_HEAD_CHECKED", set())
            monkeypatch.setattr(loss, "_softcap", lambda m, logits, s=shift: real(m, logits).add_(s))
            if passes:
                loss._check_head(model, cpu)
            else:
                with pytest.raises(NotImplementedError, match="transforms its logits in a way car_hf does not"):
                    loss._check_head(model, cpu)
    assert (loss.head_tolerance(torch.bfloat16), loss.head_tolerance(torch.float16)) == (2.0**-7, 2.0**-10)


def test_overflowing_logits_are_a_clear_error_not_a_head_mismatch(tokenizer, monkeypatch):
    model = tiny.build_causal_lm(tokenizer).to(torch.float16)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e5)  # logits past float16's 65504, as Gemma's activations can go
    monkeypatch.setattr(loss, "_HEAD_CHECKED", set())
    with pytest.raises(ConfigError, match=r"LlamaForCausalLM's own logits are not finite in float16 .*bfloat16 or "
                                          r"float32"):
        loss._check_head(model, torch.device("cpu"))
