"""``car-hf``: score a dataset, rank its generators, run the demo, publish. Thin: parses, calls the API, prints.

    car-hf score DATA --base-model google/gemma-3-270m --reward-column judge_preference -o scored.parquet
    car-hf rank scored.parquet --beta 1.0 --output-dir leaderboard/

The scoring options are the fields of :class:`~car_hf.CARConfig`, as ``--score-max-length`` or
``--score_max_length``; the old ``--max-length``, ``--dtype``, ``--device`` and ``--trust-remote-code`` still work
(hidden, with a note). A user error ends with one ``car-hf <command>: error: ...`` line and exit status 2.

Example:
    >>> args = build_parser().parse_args(["score", "rows.jsonl", "--reward-column", "judge_preference",
    ...                                   "--beta", "0.5", "--score-max-length", "512", "-o", "scored.parquet"])
    >>> config = config_from_args(args)
    >>> config.reward_column, config.beta, config.score_max_length, config.resolved_base_model
    ('judge_preference', 0.5, 512, 'google/gemma-3-270m')
    >>> main(["score", "rows.jsonl", "--beta", "-1", "-o", "scored.parquet"])  # stderr: car-hf score: error: beta ...
    2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import datasets
from transformers import HfArgumentParser

from .adaptive import rank_adaptive
from .config import KEYWORD_ALIASES, CARConfig
from .data import load_data, map_scores, ranking_markdown, read_config, read_ranking, save_data, write_ranking
from .demo import DEMO_MAX_LENGTH, run_demo
from .errors import ConfigError, ModelLoadError, PublishError
from .ranking import rank_generators
from .scoring import CARScorer, scorer_for_ranking

# The fields renamed with a score_ prefix (TRL owns the bare names): their old flags stay as hidden aliases.
DEPRECATED_FLAGS = {f"--{old.replace('_', '-')}": field for old, field in KEYWORD_ALIASES.items()
                    if field == f"score_{old}"}


class UsageError(Exception):
    """A bad command line; its message is the whole ``car-hf <command>: error: ...`` line."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows the defaults worth reading: not None, not an unset flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(HfArgumentParser):
    """HfArgumentParser (options from dataclass fields) whose errors are one line, not the usage block and a line."""

    def __init__(self, dataclass_types: Any = None, **kwargs: Any):
        super().__init__(dataclass_types, formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _DeprecatedFlag(argparse.Action):
    """An old flag: sets the field it was renamed to, and says so on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"{parser.prog}: note: {option_string} is deprecated, use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_deprecated_flags(parser: _Parser) -> None:
    for flag, field in DEPRECATED_FLAGS.items():
        new = parser._option_string_actions[f"--{field}"]  # the option HfArgumentParser made from the field
        parser.add_argument(flag, dest=field, action=_DeprecatedFlag, type=new.type, nargs=new.nargs,
                            const=new.const, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data",
                        help="a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, or a Hub dataset id")
    parser.add_argument("--split", default="train", help="split of a Hub dataset or saved DatasetDict")
    parser.add_argument("--by", default="generator", help="column naming each row's response generator")
    parser.add_argument("--generators", type=lambda s: [g for g in s.split(",") if g],
                        help="comma-separated generators to keep (default: all)")
    parser.add_argument("--max-instructions", type=int,
                        help="keep the first N distinct instructions (by instruction_id, else instruction)")


def _add_map_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("datasets.map")
    group.add_argument("--batch-size", type=int, default=64, help="rows per datasets.map batch")
    group.add_argument("--num-proc", type=int, help="datasets.map workers, one per GPU (with_rank)")


def _add_ranking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ranking (with --beta and --reward-transform above)")
    group.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    group.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples; 0 for none")
    group.add_argument("--seed", type=int, default=0, help="bootstrap seed; with --adaptive also the scoring order")
    group.add_argument("--adaptive", action="store_true",
                       help="score instructions in seeded random rounds and stop once the ranking is decided at "
                            "--confidence (implied by --max-examples)")
    group.add_argument("--max-examples", type=int, help="adaptive: row budget (whole instructions only)")
    group.add_argument("--target", choices=("top1", "ranking"), default="top1",
                       help="adaptive: decide the leader (top1) or every adjacent pair (ranking)")
    group.add_argument("--checkpoint", help="adaptive: folder for per-round results; a rerun resumes from it")
    group.add_argument("--output-dir", help="write leaderboard.md/.csv, car_config.json (and scored/ if scored here)")
    group.add_argument("--plot", action="store_true", help="also write ranking.png (iso-CAR picture) into --output-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="car-hf",
        description="Compatibility-Adjusted Reward: rank response generators (teachers) for a base model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    score = commands.add_parser("score", dataclass_types=[CARConfig],
                                help="add reward, base_loss and car columns to a dataset",
                                description="Score every row: reward, base-model loss, per-example CAR.")
    _add_deprecated_flags(score)
    _add_data_arguments(score)
    _add_map_arguments(score)
    score.add_argument("-o", "--output", required=True,
                       help="where to write: .parquet, .jsonl, or a folder (save_to_disk)")

    rank = commands.add_parser("rank", dataclass_types=[CARConfig],
                               help="rank generators by CAR (scores first if base_loss is missing)",
                               description="Leaderboard of generators by CAR with bootstrap intervals. Data "
                                           "without a base_loss column is scored first with the scoring options.")
    _add_deprecated_flags(rank)
    _add_data_arguments(rank)
    _add_map_arguments(rank)
    _add_ranking_arguments(rank)

    demo = commands.add_parser(
        "demo", dataclass_types=[CARConfig],
        help="rank the AlpacaEval generators for the default base model (judge preference as reward)",
        description="Rank the generators of the AlpacaEval zoo (the local shared/data copy, else the public "
                    "AlpacaEval outputs on the Hub) for a base model, scoring instructions adaptively until the "
                    "leader is decided or the budget is spent; writes the ranking folder `car-hf push` publishes. "
                    "The reward is the judge's preference (judge_preference) unless --reward-model is given.")
    _add_deprecated_flags(demo)
    demo.set_defaults(score_max_length=DEMO_MAX_LENGTH)
    demo.add_argument("--output-dir", default="car_demo", help="where to write")
    demo.add_argument("--zoo", help="zoo file (default: $CAR_HF_ZOO, else shared/data/alpaca_eval_zoo/zoo.jsonl.gz "
                                    "in or above the working directory, else the Hub)")
    demo.add_argument("--max-examples", type=int, default=250,
                      help="row budget (the default takes under 10 minutes on a 2-core CPU)")
    demo.add_argument("--confidence", type=float, default=0.95, help="stop when the leader is decided at this level")
    demo.add_argument("--seed", type=int, default=0, help="seed of the scoring order and the bootstrap")
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


def config_from_args(args: argparse.Namespace) -> CARConfig:
    """The scoring options of a parsed command line; CARConfig validates them (a bad value: ConfigError)."""
    return CARConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(CARConfig)})


def _ranking_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """How the columns were scored, for a leaderboard: the ranking records its own beta and reward transform."""
    return {key: value for key, value in record.items() if key not in ("beta", "reward_transform")}


def _load(args: argparse.Namespace) -> datasets.Dataset:
    return load_data(args.data, split=args.split, generators=args.generators, by=args.by,
                     max_instructions=args.max_instructions)


def _score(args: argparse.Namespace, ds: datasets.Dataset, scorer: CARScorer) -> datasets.Dataset:
    return map_scores(ds, scorer, batch_size=args.batch_size, num_proc=args.num_proc,
                      desc=f"Scoring with {scorer.config.resolved_base_model}")


def cmd_score(args: argparse.Namespace) -> int:
    scorer = CARScorer(config=config_from_args(args))  # first: a bad option fails before any data loads
    scored = _score(args, _load(args), scorer)
    record = scorer.scoring_config()
    path = save_data(scored, args.output, record)
    print(f"scored {len(scored)} rows → {path}")
    print(json.dumps(record, indent=2, default=str))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.plot and not args.output_dir:
        raise ConfigError("--plot writes ranking.png into --output-dir: pass --output-dir")
    ranking = dict(by=args.by, beta=config.beta, reward_transform=config.reward_transform,
                   confidence=args.confidence, seed=args.seed)
    ds = _load(args)
    summary = None
    if "base_loss" in ds.column_names:  # already scored: --reward-column picks the reward
        table = rank_generators(ds, reward_column=config.reward_column or "reward", n_bootstrap=args.bootstrap,
                                config=_ranking_record(read_config(args.data)), **ranking)
    else:
        scorer = scorer_for_ranking(config)  # a pool transform (minmax, shift) applies to the ranking only
        if args.adaptive or args.max_examples is not None:
            result = rank_adaptive(ds, scorer, target=args.target, max_examples=args.max_examples,
                                   batch_size=args.batch_size, num_proc=args.num_proc, checkpoint=args.checkpoint,
                                   config=_ranking_record(scorer.scoring_config()), **ranking)
            ds, table, summary = result.scored, result.table, result.summary()
        else:
            ds = _score(args, ds, scorer)
            table = rank_generators(ds, n_bootstrap=args.bootstrap, config=_ranking_record(scorer.scoring_config()),
                                    **ranking)
    print(ranking_markdown(table))
    if summary:
        print("\n" + summary)
    if args.output_dir:
        written = write_ranking(args.output_dir, table, ds, examples=ds if args.plot else None)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = run_demo(args.output_dir, config=config_from_args(args), zoo=args.zoo, max_examples=args.max_examples,
                      confidence=args.confidence, seed=args.seed, include_reference=args.include_reference)
    excluded = result.table.attrs["car"].get("excluded_reference_generators")
    print(ranking_markdown(result.table))
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
    from .callbacks import read_selection_summary

    folder = Path(args.path)
    common = {"private": args.private, "revision": args.revision, "commit_message": args.commit_message}
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        base_model = args.base_model or _trained_base_model(folder)
        summary = read_selection_summary(folder)  # any selection mode, recorded by car_hf's Trainer callback
        if args.dry_run:  # the exact folder: a copy with the card written in, as push_model would send it
            import shutil

            skipped = shutil.ignore_patterns("checkpoint-*", "_*", ".*")  # what push_model does not upload
            folder = Path(shutil.copytree(folder, args.dry_run, ignore=skipped))
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
    raise ConfigError(f"cannot tell the base model of {folder}: pass --base-model")


# What a user can fix, reported as one line with exit status 2 and no traceback. ConfigError and InputError are
# ValueErrors; ConnectionError: an unreachable Hub or server.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ConnectionError, ModelLoadError, PublishError)


def _report(line: str) -> int:
    print(" ".join(line.split()), file=sys.stderr)  # one line even when a library's message has several
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return _report(str(error))
    try:
        return {"score": cmd_score, "rank": cmd_rank, "push": cmd_push, "demo": cmd_demo}[args.command](args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        return _report(f"car-hf {args.command}: error: {message}")


if __name__ == "__main__":
    sys.exit(main())
