"""Generation throughput: car_hf's ``transformers`` engine against a per-example ``model.generate`` loop.

Same model (SmolLM2-135M-Instruct, fp32, CPU), same prompts (distinct AlpacaEval instructions, rendered by the
teacher's chat template), same greedy decoding and stop tokens, in the same process:

* ``loop``: for each prompt, ``model.generate(ids, attention_mask=ones, generation_config=...)``, one at a time;
* ``car_hf``: ``add_responses((model, tokenizer), max_new_tokens=...).generate(prompts)``: length-sorted
  token-budget batches, left padding, one ``generate`` per batch.

The two run interleaved round by round (order rotated), after a warm-up of both; the ratio is the median of
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
import json
import statistics
import sys
from pathlib import Path

from common import MODELS, load_real, machine, paired_ratios, quiet_stack, rotate, spread, timed, zoo_instructions

MODEL = MODELS["smollm2"]


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

    torch = quiet_stack(args.threads)
    from transformers import GenerationConfig

    from car_hf import add_responses

    model, tokenizer = load_real(MODEL)
    prompts = zoo_instructions(n, "generate_bench")
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
        row: dict = {}
        for name in rotate(["loop", *budgets], r):
            timing = timed(loop if name == "loop" else car(name))
            row[name] = {"seconds": timing.seconds, "other_load": timing.other_load, "outputs": timing.result}
            print(f"round {r}: {name if name == 'loop' else f'car_hf@{name}'}: {timing.seconds:.1f} s "
                  f"(other load {timing.other_load:.0%})", flush=True)
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
        seconds = [{name: run["seconds"] for name, run in r.items()} for r in rounds]
        middle, lo, hi = spread(paired_ratios(seconds, "loop", budget))
        same = sum(all(r[budget]["outputs"][i] == ids for r in rounds) for i, ids in enumerate(reference))
        summary["car_hf"][budget] = {"seconds": car_s, "speedup": middle, "speedup_range": [lo, hi],
                                     "identical_rows": same, "other_load": max(r[budget]["other_load"] for r in rounds)}
        print(f"car_hf@{budget}: {car_s:.1f} s, {tokens / car_s:.1f} tokens/s, {middle:.2f}x the "
              f"loop ({lo:.2f}-{hi:.2f}); identical outputs in every round: {same} of {n} rows")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
