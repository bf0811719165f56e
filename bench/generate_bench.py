"""Generation throughput: car_hf's ``transformers`` engine against a per-example ``model.generate`` loop.

Same model (SmolLM2-135M-Instruct, fp32, CPU), same prompts (distinct AlpacaEval instructions, rendered by the
teacher's chat template), same greedy decoding and stop tokens, in the same process:

* ``loop``: for each prompt, ``model.generate(ids, attention_mask=ones, generation_config=...)``, one at a time;
* ``car_hf``: ``add_responses((model, tokenizer), max_new_tokens=...).generate(prompts)``: length-sorted
  token-budget batches, left padding, one ``generate`` per batch.

The two run interleaved round by round (order alternated), after a warm-up of both; the ratio is the median of
the per-round paired ratios, and the other processes' share of the CPU during each timed section is reported (the
machine may be shared). Outputs are compared token for token: a row differs when its generated ids differ.
Rendering is inside both timings.

Usage:
    python bench/generate_bench.py --quick      # 6 prompts, 32 new tokens, 1 round (~1 minute)
    python bench/generate_bench.py              # 32 prompts, 128 new tokens, 3 rounds
    python bench/generate_bench.py --batch-tokens 2048,8192,32768   # car_hf at several batch budgets
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from score_bench import _cpu_ticks, _self_ticks, machine, other_load  # noqa: E402  (shared load and machine readers)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def instructions(n: int) -> list[str]:
    import tiny

    path = tiny.shared_data_dir() / "alpaca_eval_zoo" / "zoo.jsonl.gz"
    if not path.is_file():
        raise SystemExit(f"generate_bench: no AlpacaEval zoo at {path} (set CAR_HF_SHARED_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        distinct = dict.fromkeys(json.loads(line)["instruction"] for line in f if line.strip())
    return list(distinct)[:n]


def timed(fn):
    """``(result, seconds, other processes' CPU share)`` of ``fn()``."""
    ticks, own, start = _cpu_ticks(), _self_ticks(), time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, other_load(ticks, _cpu_ticks(), _self_ticks() - own)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 prompts, 32 new tokens, 1 round")
    parser.add_argument("--prompts", type=int, default=None, help="distinct instructions (default 32; quick 6)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128; quick 32")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--batch-tokens", default="16384",
                        help="car_hf at these generation_batch_tokens, comma-separated (16384: the default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine a second "
                                                                   "thread can make each step 10x slower)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    n = args.prompts or (6 if args.quick else 32)
    max_new = args.max_new_tokens or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch
    from transformers import GenerationConfig

    from car_hf.generate import add_responses
    from car_hf.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(MODEL, device="cpu", dtype="float32")
    prompts = instructions(n)
    budgets = [int(b) for b in args.batch_tokens.split(",")]
    generators = {b: add_responses((model, tokenizer), max_new_tokens=max_new, generation_batch_tokens=b)
                  for b in budgets}
    engine = generators[budgets[0]].engine()
    loop_config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                   eos_token_id=engine.stops, pad_token_id=engine.pad_id)

    def loop() -> list[tuple[int, ...]]:
        out = []
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            ids = torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              tokenize=True)["input_ids"]])
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=loop_config)
            out.append(tuple(new[0, ids.shape[1]:].tolist()))
        return out

    def car(budget: int):
        return lambda: [g.token_ids for g in generators[budget].generate(prompts)]

    def trim(ids: tuple[int, ...]) -> tuple[int, ...]:  # the loop's ids up to and with the first stop token
        end = next((k for k, t in enumerate(ids) if t in engine.stops), None)
        return ids if end is None else ids[: end + 1]

    print(f"{MODEL}: {n} prompts, max_new_tokens={max_new}, {repeats} round(s), {args.threads} thread(s); "
          f"car_hf budgets {budgets}", flush=True)
    for budget in budgets:  # warm-up: the first calls allocate and pick kernels
        generators[budget].generate(prompts[:2])
    rounds: list[dict] = []
    for r in range(repeats):
        order = ["loop", *budgets] if r % 2 == 0 else [*budgets, "loop"]
        row: dict = {}
        for name in order:
            outputs, seconds, load = timed(loop if name == "loop" else car(name))
            row[name] = {"seconds": seconds, "other_load": load, "outputs": outputs}
            print(f"round {r}: {name if name == 'loop' else f'car_hf@{name}'}: {seconds:.1f} s "
                  f"(other load {load:.0%})", flush=True)
        rounds.append(row)

    reference = [trim(ids) for ids in rounds[0]["loop"]["outputs"]]
    tokens = sum(len(ids) for ids in reference)
    truncated = sum(ids[-1] not in engine.stops for ids in reference)
    loop_s = statistics.median(r["loop"]["seconds"] for r in rounds)
    summary = {"model": MODEL, "prompts": n, "max_new_tokens": max_new, "rounds": repeats, "threads": args.threads,
               "generated_tokens": tokens, "truncated": truncated, "loop_seconds": loop_s,
               "loop_other_load": max(r["loop"]["other_load"] for r in rounds), "machine": machine(), "car_hf": {}}
    print(f"\nloop: {loop_s:.1f} s, {tokens / loop_s:.1f} generated tokens/s ({tokens} tokens, {truncated} of {n} "
          "rows cut at max_new_tokens)")
    for budget in budgets:
        car_s = statistics.median(r[budget]["seconds"] for r in rounds)
        ratios = [r["loop"]["seconds"] / r[budget]["seconds"] for r in rounds]
        same = sum(all(r[budget]["outputs"][i] == ids for r in rounds) for i, ids in enumerate(reference))
        summary["car_hf"][budget] = {"seconds": car_s, "speedup": statistics.median(ratios),
                                     "speedup_range": [min(ratios), max(ratios)], "identical_rows": same,
                                     "other_load": max(r[budget]["other_load"] for r in rounds)}
        print(f"car_hf@{budget}: {car_s:.1f} s, {tokens / car_s:.1f} tokens/s, {statistics.median(ratios):.2f}x the "
              f"loop ({min(ratios):.2f}-{max(ratios):.2f}); identical outputs in every round: {same} of {n} rows")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
