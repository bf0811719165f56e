"""GPU check: car_hf's scoring and generation on students of real architectures' shapes, in one offline command.

Students are built from Qwen2.5-0.5B-, 1.5B- and 3B-shaped ``Qwen2Config`` s with random weights (speed does not
depend on the weights; no download: the GPU machines have no network) and score random token sequences of 512 and
2048 tokens (the last 3/4 of each is the response). Reported, per student and length, in one process:

* response tokens/s of ``car_hf.scoring.loss.response_nll`` (the engine behind ``add_base_loss``: at its defaults, and at a
  larger micro-batch and logits budget), of a per-example loop (full logits, the model's own loss over labels with
  the prompt masked) and of padded batches of 8 (full logits, masked cross-entropy), with each approach's largest
  per-example difference from the per-example loop;
* % of bf16 peak: counted FLOPs (2 x non-embedding parameters x tokens + causal attention 2 x layers x width x
  length^2 + the LM head 2 x hidden x vocabulary x scored tokens, the same useful work for every approach) / time /
  the dense bf16 matmul rate measured in this process (8192^3 on a GPU);
* peak memory (``torch.cuda.max_memory_allocated``, weights included);
* precision: car_hf in float32 against the full-logits float32 loss (<= 1e-4 nats/token), and car_hf in bfloat16
  against car_hf in float32, within the first-order bound of the logits' own bf16 rounding, 2 x 2^-8 x the mean
  per-token max |logit| (the bound ``tests/test_bf16.py`` checks and explains);
* generation: car_hf's ``transformers`` engine against a per-example ``model.generate`` loop (greedy, the same
  prompts and stop tokens), in generated tokens/s, on the smallest student.

A size that runs out of memory is a row saying so; the others still run. The script exits 1 when a precision check
fails (after writing the table). It imports neither ``datasets`` nor ``trl`` nor ``vllm``.

Usage:
    python bench/gpu_check.py --output bench/GPU.md     # one GPU: 3 students x 2 lengths (budget: < 8 minutes)
    python bench/gpu_check.py --dry-run                 # tiny configs on the CPU, seconds (run by the test suite)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Any

from common import Timing, cell, command_line, log, markdown_table, quiet_stack, timed, today, versions, write_report

from baselines import forward_flops, matmul_rate, padded_batch_losses, per_example_losses

from car_hf import CARConfig

# Qwen2.5's published configs (Qwen/Qwen2.5-{0.5B,1.5B,3B}/config.json): GQA with 2 KV heads, tied embeddings.
QWEN25_COMMON = dict(vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6,
                     rms_norm_eps=1e-6, hidden_act="silu")
STUDENTS = {
    "Qwen2.5-0.5B-shaped": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                num_attention_heads=14, num_key_value_heads=2),
    "Qwen2.5-1.5B-shaped": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, num_key_value_heads=2),
    "Qwen2.5-3B-shaped": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, num_key_value_heads=2),
}
DRY_STUDENT = {"tiny Qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=1024)}
FULL = dict(lengths=(512, 2048), tokens=32768, precision_rows=4, prompts=64, loop_prompts=8, new_tokens=128,
            matmul=8192)
DRY = dict(lengths=(32, 96), tokens=384, precision_rows=3, prompts=6, loop_prompts=3, new_tokens=8, matmul=256)
FP32_TOLERANCE = 1e-4  # nats/token: car_hf against full logits, both float32
BF16_UNIT_ROUNDOFF = 2.0**-8
B_BATCH = 8
LOOP = "per-example loop (full logits)"
DEFAULTS = (CARConfig().batch_tokens, 256)  # add_base_loss's batch_tokens and logits_mb
CAR_SETTINGS = {f"car_hf (defaults: {DEFAULTS[0]} tokens, {DEFAULTS[1]} MB logits)": DEFAULTS,
                "car_hf (32768 tokens, 1024 MB logits)": (32768, 1024)}


def matmul_tflops(torch, device, n: int) -> float:
    """Median dense bf16 matmul rate (TFLOP/s) of n^3 products on ``device``, after a warm-up."""
    return matmul_rate(torch, n, torch.bfloat16, device, repeats=10, warmup=3)[0] / 1e12


def build_student(torch, shape: dict, dtype, device, row: dict) -> tuple[Any, dict | None]:
    """``(the student, None)``, random weights seeded with 0; or ``(None, row)`` saying why it could not be built."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**(QWEN25_COMMON | shape), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    try:
        with torch.device(device):
            return Qwen2ForCausalLM(config).to(dtype).eval(), None
    except Exception as error:  # reported as a row
        free(torch, device)
        return None, failure(row | {"approach": "building the student"}, error)


def sequences(torch, vocab: int, length: int, count: int, seed: int):
    from car_hf.core.formats import Rendered

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (count, length), generator=generator).tolist()
    return [Rendered(row, length // 4, False) for row in ids]


def per_example(torch, model, seqs) -> list[float]:
    """Mean NLL of each response: the model's own loss over labels, prompt masked, full logits."""
    return per_example_losses(torch, model, seqs)[0]


def padded_batches(torch, model, seqs) -> list[float]:
    """Mean NLL of each response in dataset-order padded batches of 8: full logits, masked cross-entropy."""
    return [total / n for total, n in zip(*padded_batch_losses(torch, model, seqs, pad_id=0, batch=B_BATCH))]


def car_hf(model, seqs, batch_tokens: int, logits_mb: int) -> list[float]:
    from car_hf.scoring.loss import response_nll

    sums, _, counts = response_nll(model, seqs, pad_id=0, batch_tokens=batch_tokens, logits_mb=logits_mb)
    return [s / c for s, c in zip(sums, counts)]


def host_syncs(torch, model, seqs) -> tuple[int | None, int]:
    """``(host syncs torch reports in one car_hf call on seqs, its micro-batches)``; syncs are None on a CPU."""
    import warnings

    from car_hf.core.batching import model_batches

    batches = sum(1 for _ in model_batches([s.ids for s in seqs], 0, model.device, batch_tokens=DEFAULTS[0]))
    if model.device.type != "cuda":
        return None, batches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            car_hf(model, seqs, *DEFAULTS)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), batches


def max_logits(torch, model, seqs) -> list[float]:
    """Per sequence: the mean over response positions of the largest |logit| (full logits, the model's dtype)."""
    out = []
    with torch.inference_mode():
        for s in seqs:
            logits = model(input_ids=torch.tensor([s.ids], device=model.device)).logits[0, s.start - 1 : -1]
            out.append(float(logits.float().abs().amax(-1).mean()))
    return out


def failure(row: dict, error: Exception) -> dict:
    """A row saying what stopped this measurement (the others still run); anything but running out of memory is a
    failure of the check (``crashed``)."""
    oom = "out of memory" in str(error).lower() or isinstance(error, MemoryError)
    first = (str(error).splitlines() or [""])[0][:100]
    return row | {"error": f"out of memory: {first}" if oom else f"{type(error).__name__}: {first}", "crashed": not oom}


def attempt(torch, row: dict, run, inputs: list, device) -> tuple[dict, Timing | None]:
    """``run`` warmed up on 2 of ``inputs`` (kernels chosen, caches allocated, the head checked), then timed on all;
    a measurement that fails is the row's error (:func:`failure`) and the others still run."""
    try:
        run(inputs[:2])
        return row, timed(lambda: run(inputs), device)
    except Exception as error:  # reported as a row
        free(torch, device)
        return failure(row, error), None


def score_student(torch, name: str, shape: dict, plan: dict, device, dtype, rate: float) -> dict:
    """Speed and precision rows of one student at each length."""
    speed: list[dict] = []
    precision: list[dict] = []
    model, failed = build_student(torch, shape, dtype, device, {"model": name, "length": "all"})
    if failed:
        return {"speed": [failed], "precision": []}
    runs = {LOOP: lambda s: per_example(torch, model, s),
            f"padded batches of {B_BATCH} (full logits)": lambda s: padded_batches(torch, model, s)}
    runs |= {label: (lambda s, b=b, m=m: car_hf(model, s, b, m)) for label, (b, m) in CAR_SETTINGS.items()}
    for length in plan["lengths"]:
        seqs = sequences(torch, model.config.vocab_size, length, max(2, plan["tokens"] // length), seed=length)
        work, scored = forward_flops(model, seqs, attention=True), sum(len(s.ids) - s.start for s in seqs)
        rows = []
        for label, run in runs.items():
            row, timing = attempt(torch, {"model": name, "length": length, "approach": label, "sequences": len(seqs)},
                                  run, seqs, device)
            if timing is not None:
                seconds = timing.seconds
                row |= {"values": timing.result, "seconds": seconds, "tokens_per_s": scored / seconds,
                        "peak_pct": 100 * work / seconds / (rate * 1e12), "peak_gib": timing.peak_gib}
                log(f"{name} @ {length}: {label}: {seconds:.2f} s, {scored / seconds:,.0f} response tokens/s")
            rows.append(row)
        loop = next((r for r in rows if r["approach"] == LOOP and "values" in r), None)
        for row in rows:
            if loop is not None and "values" in row:
                row["speedup"] = row["tokens_per_s"] / loop["tokens_per_s"]
                row["max_diff"] = max(abs(a - b) for a, b in zip(row["values"], loop["values"]))
        speed += rows
        checked = check_precision(torch, model, seqs[: plan["precision_rows"]], name, length)
        try:
            checked["syncs"], checked["batches"] = host_syncs(torch, model, seqs)
        except Exception as error:  # reported as a row
            checked = failure(checked, error)
        precision.append(checked)
        model.to(dtype)
    del model
    free(torch, device)
    return {"speed": speed, "precision": precision}


def free(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_precision(torch, model, seqs, name: str, length: int) -> dict:
    """car_hf float32 against full-logits float32, and car_hf bfloat16 against car_hf float32, on ``seqs``."""
    row = {"model": name, "length": length, "sequences": len(seqs)}
    try:
        model.to(torch.bfloat16)
        low = car_hf(model, seqs, *DEFAULTS)
        model.to(torch.float32)  # the bf16 weights, exactly: only the arithmetic changes
        fp32 = car_hf(model, seqs, *DEFAULTS)
        full = per_example(torch, model, seqs)
        peaks = max_logits(torch, model, seqs)
    except Exception as error:  # reported as a row
        free(torch, device=model.device)
        return failure(row, error)
    bounds = [2 * BF16_UNIT_ROUNDOFF * p for p in peaks]
    row |= {"loss": statistics.mean(fp32), "fp32_diff": max(abs(a - b) for a, b in zip(fp32, full)),
            "bf16_diff": max(abs(a - b) for a, b in zip(low, fp32)), "bound": min(bounds)}
    row["fp32_ok"] = row["fp32_diff"] <= FP32_TOLERANCE
    row["bf16_ok"] = all(abs(a - b) <= bound for a, b, bound in zip(low, fp32, bounds))
    row["ok"] = row["fp32_ok"] and row["bf16_ok"]
    return row


def generation(torch, name: str, shape: dict, plan: dict, device, dtype) -> list[dict]:
    """car_hf's transformers engine vs a per-example ``generate`` loop, greedy, on the same chat prompts."""
    import tiny

    from car_hf.generation.engines.base import prompt_ids
    from car_hf.generation.engines.transformers_engine import TransformersEngine
    from car_hf.generation.teacher import TeacherConfig

    tokenizer = tiny.build_tokenizer()
    model, failed = build_student(torch, shape, dtype, device, {"model": name})
    if failed:
        return [failed]
    prompts = [[{"role": "user", "content": row["instruction"]}]
               for row in tiny.sample_rows(n_instructions=plan["prompts"], generators=1)]
    engine = TransformersEngine(model, tokenizer, TeacherConfig(teacher=name, max_new_tokens=plan["new_tokens"]), name)

    def loop(chats) -> list[int]:
        counts = []
        for messages in chats:
            ids = torch.tensor([prompt_ids(tokenizer, messages, None, 0, name)], device=device)
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 generation_config=engine.generation_config)[0, ids.shape[1]:].tolist()
            end = next((k for k, t in enumerate(new) if t in engine.stops), None)
            counts.append(len(new) if end is None else end + 1)
        return counts

    def batched(chats) -> list[int]:
        return [g.tokens for g in engine.generate(chats, list(range(len(chats))))]

    out = []
    for label, run, chats in (("per-example generate loop", loop, prompts[: plan["loop_prompts"]]),
                              ("car_hf transformers engine", batched, prompts)):
        row = {"model": name, "approach": label, "prompts": len(chats), "new_tokens": plan["new_tokens"]}
        with torch.inference_mode():
            row, timing = attempt(torch, row, run, chats, device)
        if timing is not None:
            generated, seconds = sum(timing.result), timing.seconds
            row |= {"generated": generated, "seconds": seconds, "tokens_per_s": generated / seconds,
                    "peak_gib": timing.peak_gib}
            log(f"generation: {label}: {generated} tokens in {seconds:.2f} s")
        out.append(row)
    if all("tokens_per_s" in r for r in out):
        out[1]["speedup"] = out[1]["tokens_per_s"] / out[0]["tokens_per_s"]
    del model
    free(torch, device)
    return out


def _table(header: list[str], records: list[dict], cells, failed_cells) -> str:
    """:func:`markdown_table` of ``records``: ``cells(r)``, or for a measurement that failed ``failed_cells(r)`` then
    its error, the rest of the row left empty."""
    rows = [failed_cells(r) + [r["error"]] if "error" in r else cells(r) for r in records]
    return markdown_table(header, [row + [""] * (len(header) - len(row)) for row in rows])


def markdown(info: dict, speed: list[dict], precision: list[dict], generated: list[dict]) -> str:
    """The report: the machine, then the scoring, precision and generation tables."""
    scoring = _table(
        ["student", "tokens", "approach", "sequences", "response tokens/s", "vs per-example", "% of bf16 peak",
         "peak memory (GiB)", "max diff vs per-example (nats/token)"], speed,
        lambda r: [r["model"], r["length"], r["approach"], r["sequences"], f"{r['tokens_per_s']:,.0f}",
                   cell(r.get("speedup"), "{:.2f}x"), f"{r['peak_pct']:.1f}", cell(r["peak_gib"]),
                   cell(r.get("max_diff"), "{:.1e}")],
        lambda r: [r["model"], r["length"], r["approach"], r.get("sequences", "–")])
    checks = _table(
        ["student", "tokens", "sequences", "mean loss (fp32)", "fp32 vs full logits", "bf16 vs fp32", "bf16 bound",
         "ok", "host syncs / micro-batches"], precision,
        lambda r: [r["model"], r["length"], r["sequences"], f"{r['loss']:.4f}", f"{r['fp32_diff']:.1e}",
                   f"{r['bf16_diff']:.1e}", f"{r['bound']:.1e}", "yes" if r["ok"] else "**no**",
                   f"{cell(r['syncs'], '{}')} / {r['batches']}"],
        lambda r: [r["model"], r["length"], r["sequences"]])
    generation_table = _table(
        ["student", "approach", "prompts", "max new tokens", "generated tokens", "tokens/s", "vs loop",
         "peak memory (GiB)"], generated,
        lambda r: [r["model"], r["approach"], r["prompts"], r["new_tokens"], r["generated"],
                   f"{r['tokens_per_s']:,.1f}", cell(r.get("speedup"), "{:.2f}x"), cell(r["peak_gib"])],
        lambda r: [r["model"], r["approach"], r.get("prompts", "–")])
    lines = [f"# GPU check: car_hf on {info['device_name']}", "",
             f"Measured {info['date']} by `{info['command']}` in {info['elapsed']:.0f} s: torch {info['torch']}, "
             f"transformers {info['transformers']}, Python {info['python']}. Students: random weights in "
             f"{info['dtype']} with the published Qwen2.5 shapes (vocabulary 151,936) or, in a dry run, a tiny "
             f"Qwen2; random token sequences, the last 3/4 of each scored. Dense bf16 matmul rate measured here: "
             f"**{info['rate']:.1f} TFLOP/s** ({info['matmul']}^3).", "",
             "## Scoring (response tokens/s)", "", scoring,
             "", "## Precision (car_hf, per-example mean loss)", "",
             f"float32 vs the full-logits float32 loss: tolerance {FP32_TOLERANCE:g} nats/token. bfloat16 vs "
             "float32 on the same weights: each sequence within 2 x 2^-8 x its mean per-token max |logit| "
             "(the first-order effect of rounding the logits to bf16; the smallest bound is shown).", "",
             "The last column: host syncs torch reports (`torch.cuda.set_sync_debug_mode`) in one car_hf call on all "
             "of the length's sequences, and its micro-batches (the result's transfer back is one sync).", "", checks,
             "", "## Generation (greedy, generated tokens/s)", "", generation_table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU, float32 speed rows (seconds)")
    parser.add_argument("--output", help="also write the markdown report here (e.g. bench/GPU.md)")
    parser.add_argument("--students", default=",".join(STUDENTS), help="comma-separated, from: " + ", ".join(STUDENTS))
    args = parser.parse_args(argv)
    started = time.perf_counter()

    torch = quiet_stack()
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: the exactness check depends on it
    if args.dry_run:
        device, dtype, plan, students = torch.device("cpu"), torch.float32, DRY, DRY_STUDENT
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device here; use --dry-run to check the script on a CPU")
        device, dtype, plan = torch.device("cuda:0"), torch.bfloat16, FULL
        unknown = sorted(set(args.students.split(",")) - set(STUDENTS))
        if unknown:
            raise SystemExit(f"gpu_check: unknown students {unknown}; choose from {list(STUDENTS)}")
        students = {name: STUDENTS[name] for name in args.students.split(",")}
    rate = matmul_tflops(torch, device, plan["matmul"])
    log(f"dense bf16 matmul: {rate:.1f} TFLOP/s")
    speed, precision = [], []
    for name, shape in students.items():
        result = score_student(torch, name, shape, plan, device, dtype, rate)
        speed += result["speed"]
        precision += result["precision"]
    smallest = next(iter(students))
    generated = generation(torch, smallest, students[smallest], plan, device, dtype)
    info = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
            "date": today(), "command": command_line("gpu_check.py", argv or None),
            "elapsed": time.perf_counter() - started, **versions("torch", "transformers"),
            "dtype": str(dtype).removeprefix("torch."), "rate": rate, "matmul": plan["matmul"]}
    report = markdown(info, speed, precision, generated)
    sys.stdout.write(report)
    if args.output:
        write_report(args.output, report, announce=False)
    failed = any(r.get("crashed") for r in speed + precision + generated) or \
        not all(r.get("ok", True) for r in precision)
    if failed:
        log("gpu_check: a check failed or a measurement crashed (see the tables)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
