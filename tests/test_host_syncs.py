"""The scoring hot path keeps the host off the device's back: no host sync per LM-head tile or per reward row.

What can be checked on a CPU: the GPU path of the rank count uses no syncing op and counts what the CPU path counts;
index tensors travel in one copy per micro-batch; rewards come back in one transfer per call. (On a GPU,
``bench/gpu_check.py`` counts the syncs torch reports.)
"""

import pytest
import torch

from car_hf.core import formats
from car_hf.scoring import loss, reward
from test_loss import reference_nll


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("clip", [100, 10**6])
def test_sync_free_rank_count_equals_the_selective_one(arch, clip, causal_lm, gemma3_lm, monkeypatch):
    """The GPU path (every row compared, no host sync) counts what the CPU path (rows picked by nonzero) counts."""
    monkeypatch.setattr(loss, "RANK_CLIP", clip)
    model = causal_lm if arch == "llama" else gemma3_lm
    torch.manual_seed(0)
    hidden = torch.randn(300, model.config.hidden_size)
    targets = torch.randint(0, model.config.vocab_size, (300,))
    targets[:50] = model.get_output_embeddings()(hidden[:50]).argmax(1)  # rank-1 rows: no tile counts them
    nll, rank = loss._head_scores(model, hidden, targets, 97, selective=True)

    def no_sync(*args, **kwargs):
        raise AssertionError("a host sync in the sync-free path")

    for name in ("nonzero", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    free_nll, free_rank = loss._head_scores(model, hidden, targets, 97, selective=False)
    monkeypatch.undo()
    assert torch.equal(free_nll, nll) and torch.equal(free_rank, rank)
    assert rank[:50].eq(1).all() and rank.max() == min(clip, rank.max()) and rank.max() > 1


def test_index_tensors_reach_the_device_in_one_copy_per_micro_batch(tokenizer, causal_lm, monkeypatch):
    """response_nll copies each micro-batch's indices (rows, positions, targets, owners) in one tensor."""
    from car_hf.core import batching

    copies = []
    real = batching.to_device
    monkeypatch.setattr(loss, "to_device", lambda t, d: copies.append(tuple(t.shape)) or real(t, d))
    rendered = [formats.Rendered(list(range(5, 5 + n)), 3, False) for n in (40, 30, 12, 4)]
    sums, ranks, counts = loss.response_nll(causal_lm, rendered, pad_id=0, batch_tokens=80)
    assert counts == [37, 27, 9, 1] and copies == [(4, 37 + 27), (4, 9 + 1)]  # batches [0, 1] and [2, 3]
    for r, s, n in zip(rendered, sums, counts):
        assert s / n == pytest.approx(reference_nll(causal_lm, r)[0], abs=1e-5)


def test_rewards_come_back_in_one_transfer_per_call(tokenizer, reward_model, monkeypatch):
    sequences = [formats.Rendered(list(range(5, 5 + n)), 0, False) for n in (30, 9, 0, 14)]
    one_by_one = []
    with torch.no_grad():
        for s in sequences:
            one_by_one.append(float(reward_model(input_ids=torch.tensor([s.ids])).logits[0, 0]) if s.ids else None)
    transfers = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: transfers.append(tuple(t.shape)) or real(t))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: pytest.fail("a per-row transfer"))
    scores = reward.reward_scores(reward_model, sequences, pad_id=0, batch_tokens=40, max_rows=None)
    monkeypatch.undo()
    assert transfers == [(4,)]  # the whole call's scores at once (2 micro-batches)
    assert scores[2] != scores[2]  # an empty sequence: NaN
    for got, expected in zip(scores[:2] + scores[3:], one_by_one[:2] + one_by_one[3:]):
        assert got == pytest.approx(expected, abs=1e-5)
