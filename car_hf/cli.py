"""``car-hf``: score a dataset, rank its generators. Thin: parses, calls the API, prints.

    car-hf score DATA --base-model google/gemma-3-270m --reward-column judge_preference -o scored.parquet
    car-hf rank scored.parquet --beta 1.0 --output-dir leaderboard/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import DEFAULT_BASE_MODEL, REWARD_TRANSFORMS


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, or a Hub dataset id")
    parser.add_argument("--split", default="train", help="split of a Hub dataset or saved DatasetDict (default: train)")
    parser.add_argument("--by", default="generator", help="column naming each row's response generator (default: generator)")
    parser.add_argument("--generators", type=lambda s: [g for g in s.split(",") if g],
                        help="comma-separated generators to keep (default: all)")
    parser.add_argument("--max-instructions", type=int,
                        help="keep the first N distinct instructions (by instruction_id, else instruction)")


def _add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring")
    group.add_argument("--base-model", default=DEFAULT_BASE_MODEL,
                       help=f"student base model: Hub id, folder or .gguf file (default: {DEFAULT_BASE_MODEL})")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--reward-model", help="reward model (sequence classifier with one output) to score responses")
    source.add_argument("--reward-column", help="use this column as the reward (e.g. judge_preference)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow custom reward heads (ArmoRM)")
    group.add_argument("--ifd", action="store_true", help="also compute IFD (loss of the response alone)")
    group.add_argument("--max-length", type=int, default=2048, help="token cap; longer examples are cut and flagged (default: 2048)")
    group.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per micro-batch (default: 8192)")
    group.add_argument("--batch-size", type=int, default=64, help="rows per datasets.map batch (default: 64)")
    group.add_argument("--num-proc", type=int, help="datasets.map workers, one per GPU (with_rank)")
    group.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on capable GPUs), float32, bfloat16")
    group.add_argument("--device", help="cpu, cuda, cuda:1 (default: first GPU, else CPU)")
    group.add_argument("--empty-response", choices=("nan", "score", "raise"), default="nan",
                       help="empty responses: NaN loss (default), score the end-of-turn alone, or raise")
    group.add_argument("--prompt-column", help="prompt column when not detected")
    group.add_argument("--response-column", help="response column when not detected")
    group.add_argument("--messages-column", help="messages column when not detected")


def _add_ranking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ranking")
    group.add_argument("--beta", type=float, default=1.0, help="CAR = r / (1 + beta * loss) (default: 1.0)")
    group.add_argument("--reward-transform", choices=REWARD_TRANSFORMS, default="raise",
                       help="what to do with negative rewards (default: raise an error)")
    group.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    group.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples; 0 for none (default: 1000)")
    group.add_argument("--seed", type=int, default=0, help="bootstrap seed; with --adaptive also the scoring order")
    group.add_argument("--adaptive", action="store_true",
                       help="score instructions in seeded random rounds and stop once the ranking is decided at "
                            "--confidence (implied by --max-examples)")
    group.add_argument("--max-examples", type=int, help="adaptive: row budget (whole instructions only)")
    group.add_argument("--target", choices=("top1", "ranking"), default="top1",
                       help="adaptive: decide the leader (top1, default) or every adjacent pair (ranking)")
    group.add_argument("--checkpoint", help="adaptive: folder for per-round results; a rerun resumes from it")
    group.add_argument("--output-dir", help="write leaderboard.md/.csv, car_config.json (and scored/ if scored here)")
    group.add_argument("--plot", action="store_true", help="also write ranking.png (iso-CAR picture) into --output-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="car-hf",
        description="Compatibility-Adjusted Reward: rank response generators (teachers) for a base model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="add reward, base_loss and car columns to a dataset",
                                description="Score every row: reward, base-model loss, per-example CAR.")
    _add_data_arguments(score)
    _add_scoring_arguments(score)
    score.add_argument("--beta", type=float, default=1.0, help="beta of the per-example car column (default: 1.0)")
    score.add_argument("-o", "--output", required=True,
                       help="where to write: .parquet, .jsonl, or a folder (save_to_disk)")

    rank = commands.add_parser("rank", help="rank generators by CAR (scores first if base_loss is missing)",
                               description="Leaderboard of generators by CAR with bootstrap intervals. Data "
                                           "without a base_loss column is scored first with the scoring options.")
    _add_data_arguments(rank)
    _add_scoring_arguments(rank)
    _add_ranking_arguments(rank)

    demo = commands.add_parser(
        "demo", help="rank the AlpacaEval generators for the default base model (judge preference as reward)",
        description="Rank the generators of the AlpacaEval zoo (the local shared/data copy, else the public "
                    "AlpacaEval outputs on the Hub) for a base model, scoring instructions adaptively until the "
                    "leader is decided or the budget is spent; writes the ranking folder `car-hf push` publishes.")
    demo.add_argument("--output-dir", default="car_demo", help="where to write (default: car_demo)")
    demo.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help=f"default: {DEFAULT_BASE_MODEL}")
    demo.add_argument("--zoo", help="zoo file (default: $CAR_HF_ZOO, else shared/data/alpaca_eval_zoo/zoo.jsonl.gz "
                                    "in or above the working directory, else the Hub)")
    demo.add_argument("--beta", type=float, default=1.0, help="default: 1.0")
    demo.add_argument("--max-length", type=int, default=512, help="token cap per example (default: 512)")
    demo.add_argument("--max-examples", type=int, default=250, help="row budget (default: 250, under 10 minutes on a 2-core CPU)")
    demo.add_argument("--confidence", type=float, default=0.95, help="stop when the leader is decided at this level")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--include-reference", action="store_true",
                      help="keep the judge's reference generator (constant preference), left out by default")

    push = commands.add_parser(
        "push", help="publish a ranking folder (dataset + card) or a trained model folder to the Hub",
        description="PATH is a folder written by `car-hf rank --output-dir`/`car-hf demo` (a scored dataset, its "
                    "leaderboard and plot, published with a dataset card) or a model folder written by "
                    "recipes/sft.py (published with a model card). The token comes from `hf auth login` or HF_TOKEN.")
    push.add_argument("path", help="ranking folder or model folder")
    push.add_argument("repo_id", help="namespace/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to push to (created if missing)")
    push.add_argument("--commit-message", help="commit message")
    push.add_argument("--dry-run", metavar="FOLDER", help="write the exact folder that would be uploaded; send nothing")
    push.add_argument("--license", help="dataset license for the card (default: other)")
    push.add_argument("--base-model", help="model push: the base model id, when the folder does not record it")
    push.add_argument("--dataset-repo", help="model push: the training dataset's Hub id, linked from the card")
    return parser


def _scorer(args: argparse.Namespace) -> Any:
    from .scoring import CARScorer

    return CARScorer(
        args.base_model, reward_model=args.reward_model, reward_column=args.reward_column,
        beta=getattr(args, "beta", 1.0), ifd=args.ifd, max_length=args.max_length, batch_tokens=args.batch_tokens,
        dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        empty_response=args.empty_response, prompt=args.prompt_column, response=args.response_column,
        messages=args.messages_column,
    )


def _load(args: argparse.Namespace):
    from .data import load_data

    return load_data(args.data, split=args.split, generators=args.generators, by=args.by,
                     max_instructions=args.max_instructions)


def _score(args: argparse.Namespace, ds):
    from .data import map_scores

    scorer = _scorer(args)
    scored = map_scores(ds, scorer, batch_size=args.batch_size, num_proc=args.num_proc,
                        desc=f"Scoring with {args.base_model}")
    return scored, scorer.scoring_config()


def cmd_score(args: argparse.Namespace) -> int:
    from .data import save_data

    scored, config = _score(args, _load(args))
    path = save_data(scored, args.output, config)
    print(f"scored {len(scored)} rows → {path}")
    print(json.dumps(config, indent=2, default=str))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from .ranking import rank_generators

    from .data import read_config

    ds = _load(args)
    scored_here = "base_loss" not in ds.column_names
    if scored_here and (args.adaptive or args.max_examples is not None):
        from .adaptive import rank_adaptive

        result = rank_adaptive(
            ds, _scorer(args), by=args.by, beta=args.beta, reward_transform=args.reward_transform,
            confidence=args.confidence, target=args.target, max_examples=args.max_examples, seed=args.seed,
            batch_size=args.batch_size, num_proc=args.num_proc, checkpoint=args.checkpoint,
        )
        ds, table = result.scored, result.table
        print(leaderboard_markdown(table))
        print("\n" + result.summary())
    else:
        if scored_here:
            ds, config = _score(args, ds)
        else:
            config = {k: v for k, v in read_config(args.data).items() if k not in ("beta", "reward_transform")}
        # Scored here: add_car wrote the reward column; already scored: --reward-column picks one.
        reward_column = "reward" if scored_here else (args.reward_column or "reward")
        table = rank_generators(
            ds, by=args.by, beta=args.beta, reward_column=reward_column, reward_transform=args.reward_transform,
            confidence=args.confidence, n_bootstrap=args.bootstrap, seed=args.seed, config=config,
        )
        print(leaderboard_markdown(table))
    if args.plot and not args.output_dir:
        raise SystemExit("--plot writes ranking.png into --output-dir: pass --output-dir")
    if args.output_dir:
        written = write_ranking(Path(args.output_dir), table, ds, examples=ds if args.plot else None)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def write_ranking(out: Path, table, scored, *, examples=None) -> list[Path]:
    """The ranking folder ``car-hf push`` reads: leaderboard.md/.csv, car_config.json, [ranking.png], scored/."""
    from .data import save_data

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "leaderboard.md", out / "leaderboard.csv", out / "car_config.json"]
    written[0].write_text(leaderboard_markdown(table) + "\n")
    table.to_csv(written[1], index=False)
    written[2].write_text(json.dumps(table.attrs.get("car", {}), indent=2, default=str) + "\n")
    if examples is not None:
        from .plot import plot_ranking

        plot_ranking(table, examples, path=out / "ranking.png")
        written.append(out / "ranking.png")
    written.append(save_data(scored, str(out / "scored")))
    return written


def read_ranking(folder: Path):
    """Read back what :func:`write_ranking` wrote: (scored dataset, leaderboard with attrs, plot path or None)."""
    import pandas as pd

    from .data import load_data

    for name in ("scored", "leaderboard.csv"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing: push expects a folder written by "
                                    "`car-hf rank --output-dir` or `car-hf demo`")
    table = pd.read_csv(folder / "leaderboard.csv")
    config_file = folder / "car_config.json"
    table.attrs["car"] = json.loads(config_file.read_text()) if config_file.exists() else {}
    plot = folder / "ranking.png"
    return load_data(str(folder / "scored")), table, plot if plot.exists() else None


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .demo import run_demo

    start = time.perf_counter()
    result = run_demo(args.output_dir, base_model=args.base_model, zoo=args.zoo, beta=args.beta,
                      max_length=args.max_length, max_examples=args.max_examples, confidence=args.confidence,
                      seed=args.seed, include_reference=args.include_reference)
    excluded = result.table.attrs["car"].get("excluded_reference_generators")
    print(leaderboard_markdown(result.table))
    print()
    print(result.summary())
    if excluded:
        print(f"left out (the judge's reference: constant preference): {', '.join(excluded)}")
    print(f"\nwrote {args.output_dir}/: leaderboard.md, leaderboard.csv, car_config.json, ranking.png, scored/ "
          f"in {time.perf_counter() - start:.0f} s")
    print(f"publish: car-hf push {args.output_dir} <namespace>/<name> [--dry-run FOLDER]")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from . import hub

    folder = Path(args.path)
    common = dict(private=args.private, revision=args.revision, commit_message=args.commit_message)
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        base_model = args.base_model or _trained_base_model(folder)
        summary = _selection_summary(folder)
        if args.dry_run:  # the exact folder: a copy with the card written in, as push_model would send it
            import shutil

            folder = Path(shutil.copytree(folder, args.dry_run, ignore=shutil.ignore_patterns("checkpoint-*", ".*")))
        result = hub.push_model(folder, args.repo_id, base_model=base_model, dataset_repo=args.dataset_repo,
                                selection_summary=summary, dry_run=bool(args.dry_run), **common)
    else:
        scored, table, plot = read_ranking(folder)
        result = hub.push_dataset(scored, args.repo_id, leaderboard=table, plot=plot, dry_run=args.dry_run,
                                  license=args.license, **common)
    print(f"{'wrote' if args.dry_run else 'pushed'}: {result}")
    return 0


def _trained_base_model(folder: Path) -> str:
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        name = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if name:
            return name
    raise SystemExit(f"cannot tell the base model of {folder}: pass --base-model")


def _selection_summary(folder: Path) -> dict[str, Any] | None:
    """The CARFilter summary the Trainer stored in trainer_state.json, if any."""
    state = folder / "trainer_state.json"
    if not state.exists():
        return None
    stored = json.loads(state.read_text()).get("stateful_callbacks", {}).get("CARFilter")
    return (stored or {}).get("attributes", {}).get("summary_")


def leaderboard_markdown(table) -> str:
    """The leaderboard as a markdown table with the configuration line under it."""
    from .hub import leaderboard_markdown as table_markdown

    body = table_markdown(table)
    car = table.attrs.get("car", {})
    notes = ", ".join(f"{k}={car[k]}" for k in ("beta", "reward_transform", "reward_column", "reward_model",
                                                 "base_model", "confidence") if car.get(k) is not None)
    return f"{body}\n\nCAR = reward / (1 + beta * base_loss); {notes}"


def main(argv: Sequence[str] | None = None) -> int:
    from .hub import PublishError

    args = build_parser().parse_args(argv)
    try:
        return {"score": cmd_score, "rank": cmd_rank, "push": cmd_push, "demo": cmd_demo}[args.command](args)
    except (ValueError, KeyError, FileNotFoundError, PublishError) as error:  # the user's to fix: a message, no traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"car-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
