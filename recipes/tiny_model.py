#!/usr/bin/env python
"""Write a tiny random chat model, a small synthetic generator-zoo dataset and held-out tasks, for the CPU recipes.

Everything is built from code in about a second, with no Hub access, so the CPU configs run from a
clean clone:

    python recipes/tiny_model.py   # -> runs/tiny-model/, runs/tiny-data/train.jsonl and heldout.jsonl
    python recipes/score.py --config recipes/configs/score_tiny_cpu.yaml
    python recipes/sft.py --config recipes/configs/sft_tiny_cpu.yaml

The model is a 2-layer ``LlamaForCausalLM`` (hidden size 64) with random weights; the tokenizer is a
byte-level BPE (~600 tokens) trained on the synthetic text, with a ChatML-style chat template whose
assistant turns sit inside ``{% generation %}`` markers (so TRL's ``assistant_only_loss`` works too).

The data is the long layout car_hf reads (one row per instruction x generator): ``instruction_id``,
``instruction``, ``generator``, ``output`` and ``judge_preference`` (a reward in (0, 1)). The three
synthetic generators differ the way real teachers do: ``tidy-7b`` answers with short, regular
sentences; ``rambler-70b`` writes longer, irregular text that a judge likes a little more;
``echo-1b`` mostly repeats the question and is judged poorly. ``heldout.jsonl`` holds letter-counting tasks
(``car_hf.generation.tasks.make_tasks``: ``instruction``, ``answer``), none of them a training instruction, for
``recipes/evaluate_student.py`` and ``recipes/pilot.py`` with ``--metric answer_match``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GENERATORS = ("tidy-7b", "rambler-70b", "echo-1b")

_TASKS = (
    "water a plant", "bake bread", "tie a knot", "plan a picnic", "learn to swim", "fix a chair",
    "write a poem", "clean a window", "train a puppy", "sort some books", "brew tea", "paint a fence",
)
_OPENERS = ("How do I", "What is a good way to", "Explain how to", "Give me tips to")
_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "first second then next finally carefully slowly gently always never small large warm cold soft "
    "water bread knot picnic chair poem window puppy books tea fence brush cloth rope basket cup "
    "morning evening friend garden kitchen table light shadow river stone leaf"
).split()


def _answer(task: str, style: str, rng: random.Random) -> str:
    if style == "tidy-7b":
        steps = rng.sample(["gather what you need", "go step by step", "check your work", "take a short rest",
                            "ask a friend for help", "keep things tidy"], 3)
        return f"To {task}, first {steps[0]}. Then {steps[1]}. Finally, {steps[2]}."
    if style == "rambler-70b":
        words = [rng.choice(_WORDS) for _ in range(rng.randint(18, 30))]
        return f"Well, to {task} you might " + " ".join(words) + "."
    return f"You asked how to {task}. You asked how to {task}."


def synthetic_rows(n_instructions: int = 8, seed: int = 0) -> list[dict]:
    """Long-layout rows, instruction-major: ``n_instructions`` x the three :data:`GENERATORS`."""
    rng = random.Random(seed)
    base_reward = {"tidy-7b": 0.55, "rambler-70b": 0.65, "echo-1b": 0.15}
    rows = []
    for i in range(n_instructions):
        task = _TASKS[i % len(_TASKS)]
        instruction = f"{rng.choice(_OPENERS)} {task}?"
        for generator in GENERATORS:
            reward = min(0.99, max(0.01, base_reward[generator] + rng.uniform(-0.1, 0.1)))
            rows.append({
                "instruction_id": i, "instruction": instruction, "generator": generator,
                "output": _answer(task, generator, rng), "judge_preference": round(reward, 4),
            })
    return rows


def _corpus(rows: list[dict]) -> list[str]:
    rng = random.Random(1)
    lines = [f"{r['instruction']} {r['output']}" for r in rows]
    lines += [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(200)]
    lines += [f"{opener} {task}?" for opener in _OPENERS for task in _TASKS]
    return lines


def build_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the synthetic text, with the ChatML-style :data:`CHAT_TEMPLATE`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(_corpus(synthetic_rows(len(_TASKS))), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=PAD, extra_special_tokens=[IM_START],
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer ``LlamaForCausalLM`` with random float32 weights sized to ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model


def write_tiny_model(output_dir: str | Path, seed: int = 0) -> Path:
    """Save the tiny model and its tokenizer to ``output_dir``; returns the folder."""
    folder = Path(output_dir)
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_data(data_dir: str | Path, n_instructions: int = 8, seed: int = 0) -> Path:
    """Write :func:`synthetic_rows` as ``<data_dir>/train.jsonl``; returns the file."""
    path = Path(data_dir) / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in synthetic_rows(n_instructions, seed):
            f.write(json.dumps(row) + "\n")
    return path


def write_tiny_heldout(data_dir: str | Path, n_items: int = 12, seed: int = 1) -> Path:
    """Write ``n_items`` letter-counting tasks (``car_hf.generation.tasks.make_tasks``) as ``<data_dir>/heldout.jsonl``."""
    from car_hf.generation.tasks import make_tasks

    path = Path(data_dir) / "heldout.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in make_tasks(n_items, seed=seed, types=["count_letters"]).to_list():
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/tiny-model", help="model folder (default: runs/tiny-model)")
    parser.add_argument("--data_dir", default="runs/tiny-data", help="data folder (default: runs/tiny-data)")
    parser.add_argument("--n_instructions", type=int, default=8, help="instructions (x3 generators) (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model_dir = write_tiny_model(args.output_dir, args.seed)
    data = write_tiny_data(args.data_dir, args.n_instructions, args.seed)
    heldout = write_tiny_heldout(args.data_dir)
    print(f"wrote {model_dir}/, {data} ({args.n_instructions * len(GENERATORS)} rows) and {heldout}")


if __name__ == "__main__":
    main()
