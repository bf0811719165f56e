"""add_base_loss: the response-token definition, exactness (loss and rank) against full logits, batching, TRL agreement."""

import math
import pickle

import pytest
import torch
from datasets import Dataset

import tiny
from car_hf import InputError, add_base_loss
from car_hf.core import formats
from car_hf.scoring import loss
from car_hf.core.batching import model_batches, token_budget_batches


def reference_nll(model, rendered):
    """The straightforward computation: one example, full logits, log-softmax, response positions."""
    ids = torch.tensor([rendered.ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    targets = ids[0, rendered.start :]
    logprobs = torch.log_softmax(logits[rendered.start - 1 : -1], dim=-1)
    return float(-logprobs[torch.arange(len(targets)), targets].mean()), len(targets)


def reference_rank(model, rendered, clip=100):
    """The straightforward rank: full logits (the model's own softcap included), 1 + logits strictly above the
    target's, clipped at ``clip``, averaged over the response tokens; NaN without one."""
    if len(rendered.ids) <= rendered.start:
        return math.nan
    ids = torch.tensor([rendered.ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()[rendered.start - 1 : -1]
    target = logits.gather(1, ids[0, rendered.start :, None])
    ranks = [min(1 + int(n), clip) for n in (logits > target).sum(1)]
    return sum(ranks) / len(ranks)


def mixed_rows():
    """Every layout the transform reads, multi-turn included, with lengths from 1 word to ~60."""
    rows = tiny.sample_rows(n_instructions=4, generators=3)
    return rows


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_tokens", [1, 300, 100_000])
# One vocabulary tile, or many (the last partial) over small head chunks; the paper's clip (counting stops there), or
# none (random weights rank most targets beyond 100: without the clip every count is checked).
@pytest.mark.parametrize("block, head_rows, clip", [(8192, 2048, 100), (8192, 2048, 10**6), (97, 5, 100), (97, 5, 10**6)])
def test_batched_equals_unbatched_full_logits(arch, batch_tokens, block, head_rows, clip, tokenizer, causal_lm,
                                              gemma3_lm, monkeypatch):
    monkeypatch.setattr(loss, "_VOCAB_BLOCK", block)
    monkeypatch.setattr(loss, "_HEAD_ROWS", head_rows)
    monkeypatch.setattr(loss, "RANK_CLIP", clip)
    model = causal_lm if arch == "llama" else gemma3_lm
    ds = Dataset.from_list(mixed_rows())
    scored = ds.map(add_base_loss((model, tokenizer), batch_tokens=batch_tokens), batched=True, batch_size=7)
    layout = formats.detect_layout(ds.column_names)
    for i in range(len(ds)):
        example = formats.row_example(ds[i : i + 1], 0, layout, i)
        rendered = formats.render(example, tokenizer, max_length=2048)
        expected, n = reference_nll(model, rendered)
        assert scored[i]["base_loss"] == pytest.approx(expected, abs=1e-5)
        assert scored[i]["base_loss_tokens"] == n
        assert scored[i]["base_rank"] == reference_rank(model, rendered, clip)  # integer ranks: the same mean
    assert max(scored["base_rank"]) <= 100 if clip == 100 else max(scored["base_rank"]) > 100
    assert scored.column_names == ds.column_names + ["base_loss", "base_loss_tokens", "base_loss_truncated", "base_rank"]
    assert scored["instruction"] == ds["instruction"]  # every row and column, in order


def test_response_tokens_are_the_assistant_turn_with_its_end_of_turn(tokenizer):
    example = formats.Example([{"role": "user", "content": "Name a colour."}], "Blue.")
    rendered = formats.render(example, tokenizer, max_length=None)
    response = tokenizer.decode(rendered.ids[rendered.start :])
    assert response == "Blue.<|end|>\n"  # the template's end-of-turn and what follows it, as TRL trains
    assert tokenizer.decode(rendered.ids[: rendered.start]).endswith("<|assistant|>\n")


def test_plain_template_for_base_models_without_chat_template(plain_tokenizer):
    example = formats.Example([{"role": "user", "content": "Name a colour."}], "Blue.")
    rendered = formats.render(example, plain_tokenizer, max_length=None)
    text = plain_tokenizer.decode(rendered.ids)
    assert text.startswith("<bos>### Instruction:\nName a colour.\n\n### Response:\n")
    assert plain_tokenizer.decode(rendered.ids[rendered.start :]) == "Blue.<eos>"
    custom = formats.render(example, plain_tokenizer, max_length=None, plain_template="Q: {prompt}\nA: ")
    assert plain_tokenizer.decode(custom.ids).startswith("<bos>Q: Name a colour.\nA: ")


def test_layouts_messages_prompt_completion_and_instruction_agree(tokenizer, causal_lm):
    prompt, answer = "How do plants grow?", "They use light to make sugar from water and air."
    system = {"role": "system", "content": "Be brief."}
    forms = [
        {"messages": [system, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]},
        {"prompt": [system, {"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]},
    ]
    losses = [Dataset.from_list([f]).map(add_base_loss((causal_lm, tokenizer)), batched=True)[0]["base_loss"] for f in forms]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    plain = [{"prompt": prompt, "completion": answer}, {"instruction": prompt, "output": answer},
             {"question": prompt, "answer": answer}]
    options = [{}, {}, {"prompt": "question", "response": "answer"}]
    values = [Dataset.from_list([f]).map(add_base_loss((causal_lm, tokenizer), **o), batched=True)[0]["base_loss"]
              for f, o in zip(plain, options)]
    assert values[0] == pytest.approx(values[1], abs=1e-6) and values[0] == pytest.approx(values[2], abs=1e-6)
    assert values[0] != pytest.approx(losses[0], abs=1e-3)  # the system turn changes the context


def test_multi_turn_scores_only_the_last_assistant_turn(tokenizer):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    layout = formats.detect_layout(["messages"])
    example = formats.row_example({"messages": [turns]}, 0, layout, 0)
    rendered = formats.render(example, tokenizer, max_length=None)
    assert tokenizer.decode(rendered.ids[rendered.start :]) == "See you<|end|>\n"
    assert "Hello there" in tokenizer.decode(rendered.ids[: rendered.start])


def test_ifd_is_conditioned_over_unconditioned_on_the_same_tokens(tokenizer, causal_lm):
    ds = Dataset.from_list(tiny.sample_rows(n_instructions=2, generators=2))
    scored = ds.map(add_base_loss((causal_lm, tokenizer), ifd=True), batched=True)
    layout = formats.detect_layout(ds.column_names)
    for i in range(len(ds)):
        rendered = formats.render(formats.row_example(ds[i : i + 1], 0, layout, i), tokenizer, max_length=None)
        alone = formats.Rendered([tokenizer.bos_token_id] + rendered.ids[rendered.start :], 1, False)
        expected, n = reference_nll(causal_lm, alone)
        assert scored[i]["base_loss_unconditioned"] == pytest.approx(expected, abs=1e-5)
        assert scored[i]["ifd"] == pytest.approx(scored[i]["base_loss"] / expected, rel=1e-5)
        assert n == scored[i]["base_loss_tokens"]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_tokens", [1, 100_000])
def test_truncation_is_flagged_and_an_emptied_response_is_nan(arch, batch_tokens, tokenizer, causal_lm, gemma3_lm,
                                                              monkeypatch):
    monkeypatch.setattr(loss, "_VOCAB_BLOCK", 128)
    model = causal_lm if arch == "llama" else gemma3_lm
    rows = [{"instruction": "Tell me a story about a boat.", "output": "Once upon a time " * 20},
            {"instruction": "word " * 60, "output": "short"}, {"instruction": "Hi", "output": "Hello"}]
    scored = Dataset.from_list(rows).map(add_base_loss((model, tokenizer), max_length=40, batch_tokens=batch_tokens),
                                         batched=True)
    assert scored["base_loss_truncated"] == [True, True, False]
    assert 0 < scored[0]["base_loss_tokens"] < 40 and math.isfinite(scored[0]["base_loss"])
    assert scored[1]["base_loss_tokens"] == 0 and math.isnan(scored[1]["base_loss"]) and math.isnan(scored[1]["base_rank"])
    layout = formats.detect_layout(["instruction", "output"])
    for i in (0, 2):
        rendered = formats.render(formats.row_example({k: [v] for k, v in rows[i].items()}, 0,
                                                      layout, i), tokenizer, max_length=40)
        assert scored[i]["base_rank"] == reference_rank(model, rendered)
    assert len(scored) == 3


def test_empty_response_policies(tokenizer, causal_lm):
    ds = Dataset.from_list([{"instruction": "Hi", "output": "  "}, {"instruction": "Hi", "output": "Hello"}])
    nan = ds.map(add_base_loss((causal_lm, tokenizer)), batched=True)
    assert math.isnan(nan[0]["base_loss"]) and nan[0]["base_loss_tokens"] == 0 and nan[1]["base_loss_tokens"] > 0
    scored = ds.map(add_base_loss((causal_lm, tokenizer), empty_response="score"), batched=True)
    assert scored[0]["base_loss_tokens"] == 3  # "  <|end|>\n": only the end-of-turn tokens remain
    with pytest.raises(InputError, match=r"row 0, column 'output': the response is empty"):
        ds.map(add_base_loss((causal_lm, tokenizer), empty_response="raise"), batched=True, with_indices=True)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"instruction": "Hi", "output": None}, r"row 5, column 'output': the response is None"),
        ({"instruction": "Hi", "output": 3}, r"row 5, column 'output': the response must be a string, got int"),
        ({"instruction": None, "output": "x"}, r"row 5, column 'instruction': the prompt is None"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, r"row 5, column 'messages': the conversation has no assistant"),
    ],
)
def test_bad_rows_name_the_row_and_the_column(row, message, tokenizer, causal_lm):
    good = {k: ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] if k == "messages" else "ok")
            for k in row}
    ds = Dataset.from_list([good] * 5 + [row]) if not isinstance(row.get("output"), int) else None
    transform = add_base_loss((causal_lm, tokenizer))
    if ds is None:  # arrow will not mix str and int in one column: call the transform on a batch directly
        batch = {k: [good[k]] * 5 + [v] for k, v in row.items()}
        with pytest.raises(InputError, match=message):
            transform(batch, list(range(6)))
        return
    with pytest.raises(InputError, match=message):
        ds.map(transform, batched=True, with_indices=True)


def test_missing_column_lists_the_columns_present(tokenizer, causal_lm):
    ds = Dataset.from_list([{"question": "Hi", "answer": "Hello"}])
    with pytest.raises(InputError, match=r"expected 'messages'.*columns \['question', 'answer'\]"):
        ds.map(add_base_loss((causal_lm, tokenizer)), batched=True)
    with pytest.raises(InputError, match=r"column 'reply' \(response\) is missing; the dataset has columns \['question', 'answer'\]"):
        ds.map(add_base_loss((causal_lm, tokenizer), prompt="question", response="reply"), batched=True)


def test_token_budget_batches_respect_the_budget_and_cover_every_index():
    lengths = [5, 100, 7, 98, 1, 40, 40, 300]
    batches = token_budget_batches(lengths, max_tokens=200, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 200
    assert batches[0] == [7]  # longest first, alone: it exceeds the budget by itself
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_model_batches_cap_cpu_batches_skip_empty_rows_and_unmask_single_rows():
    sequences = [[1] * 600, [], [2] * 300, [3] * 3, [4] * 2]
    batches = list(model_batches(sequences, pad_id=0, device=torch.device("cpu"), batch_tokens=100_000))
    assert [members for members, _, _ in batches] == [[0], [2, 3, 4]]  # 2 x 600 > 1024: the CPU cap, not 100k
    (_, alone, no_mask), (_, ids, mask) = batches
    assert no_mask is None and alone.shape == (1, 600)
    assert ids.shape == (3, 300) and ids[1, :3].tolist() == [3, 3, 3] and ids[1, 3:].eq(0).all()
    assert mask.sum(1).tolist() == [300, 3, 2]
    with_rows = list(model_batches(sequences, pad_id=0, device=torch.device("cpu"), batch_tokens=600, max_rows=1))
    assert [m for m, _, _ in with_rows] == [[0], [2], [3], [4]]


def test_transform_pickles_as_its_recipe_not_its_weights(tokenizer, causal_lm, tiny_model_dir):
    by_object = add_base_loss((causal_lm, tokenizer))
    by_path = add_base_loss(str(tiny_model_dir), ifd=True)
    for transform in (by_object, by_path):
        payload = pickle.dumps(transform)
        assert len(payload) < 4000  # the tiny model alone pickles to >100 kB
        clone = pickle.loads(payload)
        assert clone.model.fingerprint == transform.model.fingerprint and clone.config == transform.config
    assert pickle.loads(pickle.dumps(by_path)).ifd is True


def test_rerunning_the_same_map_hits_the_datasets_cache(tmp_path, hf_cache, tokenizer, causal_lm, tiny_model_dir):
    Dataset.from_list(tiny.sample_rows(3, 2)).save_to_disk(tmp_path / "data")
    from datasets import load_from_disk

    ds = load_from_disk(tmp_path / "data")  # file-backed, so map results are cached on disk
    first = ds.map(add_base_loss(str(tiny_model_dir)), batched=True)
    calls = []
    second_transform = add_base_loss(str(tiny_model_dir))  # a new object with the same recipe
    original = type(second_transform).score
    type(second_transform).score = lambda self, *a: calls.append(1) or original(self, *a)
    try:
        second = ds.map(second_transform, batched=True)
    finally:
        type(second_transform).score = original
    assert calls == []  # nothing recomputed: the cache answered
    assert second._fingerprint == first._fingerprint
    assert second.cache_files == first.cache_files
    assert second["base_loss"] == first["base_loss"]
    changed = ds.map(add_base_loss(str(tiny_model_dir), max_length=64), batched=True)
    assert changed._fingerprint != first._fingerprint


def test_car_hf_version_enters_the_transform_fingerprint(monkeypatch, tiny_model_dir):
    from datasets.fingerprint import Hasher

    from car_hf.core import transform as transform_module

    scorer = add_base_loss(str(tiny_model_dir))
    before = Hasher.hash(scorer)
    assert Hasher.hash(add_base_loss(str(tiny_model_dir))) == before  # same recipe, same key
    monkeypatch.setattr(transform_module, "__version__", "999.0")
    assert Hasher.hash(scorer) != before  # an upgrade may compute losses differently: datasets must not reuse them


def test_multiprocess_map_with_rank_matches_single_process(tokenizer, tiny_model_dir):
    ds = Dataset.from_list(tiny.sample_rows(3, 3))
    single = ds.map(add_base_loss(str(tiny_model_dir)), batched=True, batch_size=4)
    multi = ds.map(add_base_loss(str(tiny_model_dir)), batched=True, batch_size=4, num_proc=2, with_rank=True)
    assert multi["base_loss"] == pytest.approx(single["base_loss"], abs=1e-6)
    assert multi["instruction_id"] == ds["instruction_id"]


def test_sft_trainer_evaluate_loss_equals_mean_base_loss(tmp_path, tokenizer):
    """What makes compatibility mean 'what training will see': TRL's eval loss on the same data."""
    from trl import SFTConfig, SFTTrainer

    model = tiny.build_causal_lm(tokenizer, seed=3)
    rows = tiny.sample_rows(n_instructions=4, generators=2)
    ds = Dataset.from_list(rows)
    scored = ds.map(add_base_loss((model, tokenizer), max_length=128), batched=True)
    layout = formats.detect_layout(ds.column_names)
    records = Dataset.from_list(
        [formats.sft_record(formats.row_example(ds[i : i + 1], 0, layout, i), tokenizer) for i in range(len(ds))]
    )
    config = SFTConfig(
        output_dir=str(tmp_path), per_device_eval_batch_size=1, bf16=False, fp16=False,
        activation_checkpointing=False, completion_only_loss=True, max_length=128, report_to=[], use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=records, eval_dataset=records, processing_class=tokenizer)
    eval_loss = trainer.evaluate()["eval_loss"]
    assert eval_loss == pytest.approx(sum(scored["base_loss"]) / len(scored), abs=1e-4)

