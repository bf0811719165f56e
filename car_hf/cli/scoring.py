"""``car-hf score | rank | demo | push``: score rows, rank their generators, run the demo, publish.

Example:
    >>> from car_hf.cli import build_parser
    >>> args = build_parser().parse_args(["rank", "scored.parquet", "--beta", "0.5", "--bootstrap", "0"])
    >>> args.handler.__name__, args.beta, args.bootstrap
    ('cmd_rank', 0.5, 0)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from car_hf.core.config import DEMO_MAX_LENGTH, CARConfig
from car_hf.core.errors import ConfigError
from car_hf.cli.common import add_data_arguments, add_deprecated_flags, add_map_arguments, add_output_dir, config_from_args

if TYPE_CHECKING:  # the commands import the stack when they run, so that --help needs none of it
    import datasets

    from car_hf.scoring.scorer import CARScorer


def add_ranking_arguments(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--plot", action="store_true", help="also write ranking.png (iso-CAR picture) into --output-dir")
    group.add_argument("--teacher-model", action="append", metavar="GENERATOR=MODEL",
                       help="signal audit: the model (Hub id or folder) behind a generator, to compare its tokenizer "
                            "with the student's (default: the provenance column, else the generator's name); repeat")


def add_commands(commands: Any) -> None:
    """The subcommands of this module, on ``car-hf``'s subparsers."""
    score = commands.add_parser("score", dataclass_types=[CARConfig],
                                help="add reward, base_loss and car columns to a dataset",
                                description="Score every row: reward, base-model loss, per-example CAR.")
    add_deprecated_flags(score)
    add_data_arguments(score)
    add_map_arguments(score)
    add_output_dir(score, "where to write: a folder (save_to_disk), or a .parquet or .jsonl file", required=True)

    rank = commands.add_parser("rank", dataclass_types=[CARConfig],
                               help="rank generators by CAR (scores first if base_loss is missing)",
                               description="Leaderboard of generators by CAR with bootstrap intervals. Data "
                                           "without a base_loss column is scored first with the scoring options. "
                                           "Several students (--base-model A --base-model B, or data holding "
                                           "base_loss@<student> columns): the teachers × students matrix, with "
                                           "paired intervals, each student's winner and the regret of the best "
                                           "common teacher (matrix.md/.csv/.json, matrix_regret.csv; --plot: "
                                           "matrix.png heatmap, matrix_iso_car.png); students the data lacks are "
                                           "scored first, one at a time.")
    add_deprecated_flags(rank)
    add_data_arguments(rank)
    add_map_arguments(rank)
    add_ranking_arguments(rank)
    add_output_dir(rank, "write leaderboard.md/.csv, car_config.json (and scored/ if scored here)")

    demo = commands.add_parser(
        "demo", dataclass_types=[CARConfig],
        help="rank the AlpacaEval generators for the default base model (judge preference as reward)",
        description="Rank the generators of the AlpacaEval zoo (the local shared/data copy, else the public "
                    "AlpacaEval outputs on the Hub) for a base model, scoring instructions adaptively until the "
                    "leader is decided or the budget is spent; writes the ranking folder `car-hf push` publishes. "
                    "The reward is the judge's preference (judge_preference) unless --reward-model is given.")
    add_deprecated_flags(demo)
    demo.set_defaults(score_max_length=DEMO_MAX_LENGTH)
    add_output_dir(demo, "where to write", default="car_demo")
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
    for command, handler in ((score, cmd_score), (rank, cmd_rank), (demo, cmd_demo), (push, cmd_push)):
        command.set_defaults(handler=handler)


def _ranking_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """How the columns were scored, for a leaderboard: the ranking records its own beta and reward transform."""
    return {key: value for key, value in record.items() if key not in ("beta", "reward_transform")}


def _load(args: argparse.Namespace) -> datasets.Dataset:
    from car_hf.core.data import load_data

    return load_data(args.data, split=args.split, generators=args.generators, by=args.by,
                     max_instructions=args.max_instructions)


def _score(args: argparse.Namespace, ds: datasets.Dataset, scorer: CARScorer) -> datasets.Dataset:
    # One student: map_scores. Several: the rewards once, then one student at a time (CARScorer.map).
    return scorer.map(ds, batch_size=args.batch_size, num_proc=args.num_proc,
                      desc=f"Scoring with {scorer.config.resolved_base_model}")


def cmd_score(args: argparse.Namespace) -> int:
    from car_hf.core.data import save_data
    from car_hf.core.inputs import check_scoring_inputs
    from car_hf.scoring.scorer import CARScorer

    scorer = CARScorer(config=config_from_args(args))  # first: a bad option fails before any data loads
    ds = _load(args)
    check_scoring_inputs(ds, scorer.config, fallback_reward_model=True)  # columns and rewards, before any model
    scored = _score(args, ds, scorer)
    record = scorer.scoring_config()
    path = save_data(scored, args.output_dir, record)
    print(f"scored {len(scored)} rows → {path}")
    print(json.dumps(record, indent=2, default=str))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from car_hf.ranking.adaptive import rank_adaptive
    from car_hf.ranking.audit import audit_leaderboard, audit_markdown
    from car_hf.publishing.folders import ranking_markdown, write_ranking
    from car_hf.core.data import read_config
    from car_hf.ranking.leaderboard import rank_generators
    from car_hf.scoring.scorer import scorer_for_ranking

    config = config_from_args(args)
    if args.plot and not args.output_dir:
        raise ConfigError("--plot writes ranking.png into --output-dir: pass --output-dir")
    teachers = _teacher_models(args.teacher_model)
    ranking = dict(by=args.by, beta=config.beta, reward_transform=config.reward_transform,
                   confidence=args.confidence, seed=args.seed)
    ds = _load(args)
    students = _students_to_rank(config, ds.column_names)
    if students:  # several students: the teachers × students matrix
        return _rank_matrix(args, config, ds, students, ranking)
    summary = None
    if "base_loss" in ds.column_names:  # already scored: --reward-column picks the reward
        table = rank_generators(ds, reward_column=config.reward_column or "reward", n_bootstrap=args.bootstrap,
                                config=_ranking_record(read_config(args.data)), **ranking)
    else:
        from car_hf.core.inputs import check_scoring_inputs, need_column

        need_column(args.by, ds.column_names, "--by: the generator of each row")  # before any model loads
        check_scoring_inputs(ds, config, fallback_reward_model=True)
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
    table = audit_leaderboard(table, ds, teachers=teachers)
    print(ranking_markdown(table))
    print("\n" + audit_markdown(table))
    if summary:
        print("\n" + summary)
    if args.output_dir:
        written = write_ranking(args.output_dir, table, ds, examples=ds if args.plot else None)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def _students_to_rank(config: CARConfig, columns: list[str]) -> list[str] | None:
    """The students of a several-student ranking: ``--base-model`` given more than once, else (no ``--base-model``)
    those of pre-scored data holding ``base_loss@<label>`` columns and no plain ``base_loss``; None for one student."""
    from car_hf.core.students import students_in

    if isinstance(config.base_model, list):
        return list(config.base_model)
    if config.base_model is None and "base_loss" not in columns and students_in(columns):
        return students_in(columns)
    return None


def _rank_matrix(args: argparse.Namespace, config: CARConfig, ds: datasets.Dataset, students: list[str],
                 ranking: Mapping[str, Any]) -> int:
    """``car-hf rank --base-model A --base-model B``: score the students the data lacks (the others are reused),
    then print and write the teachers × students matrix (:func:`car_hf.ranking.matrix.rank_matrix`)."""
    from car_hf.core.data import read_config, save_data
    from car_hf.core.students import student_column, student_labels
    from car_hf.ranking.matrix import rank_matrix

    if args.adaptive or args.max_examples is not None:
        raise ConfigError("--adaptive and --max-examples rank for one student; with several --base-model drop them "
                          "(or run `car-hf trial --base-model A --base-model B` to stop early for several students)")
    labels = student_labels(students)
    record, reward_column = _ranking_record(read_config(args.data)), config.reward_column or "reward"
    if any(student_column("base_loss", label) not in ds.column_names for label in labels):
        from car_hf.core.inputs import check_scoring_inputs, need_column
        from car_hf.scoring.scorer import scorer_for_ranking

        need_column(args.by, ds.column_names, "--by: the generator of each row")  # before any model loads
        check_scoring_inputs(ds, config, fallback_reward_model=True)
        scorer = scorer_for_ranking(config)
        ds = _score(args, ds, scorer)
        record, reward_column = _ranking_record(scorer.scoring_config()), "reward"
    matrix = rank_matrix(ds, labels, reward_column=reward_column, n_bootstrap=args.bootstrap, config=record,
                         **ranking)
    print(matrix.markdown())
    if args.output_dir:
        out = Path(args.output_dir)
        written = matrix.write(out)
        if args.plot:
            from car_hf.plots.matrix import plot_matrix_heatmap, plot_matrix_iso_car

            plot_matrix_heatmap(matrix, path=out / "matrix.png")
            plot_matrix_iso_car(matrix, path=out / "matrix_iso_car.png")
            written += [out / "matrix.png", out / "matrix_iso_car.png"]
        written.append(save_data(ds, str(out / "scored"), {**record, "beta": config.beta,
                                                           "reward_transform": config.reward_transform}))
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def _teacher_models(values: list[str] | None) -> dict[str, str]:
    """``--teacher-model GENERATOR=MODEL`` values as a mapping (a value without both parts is a ConfigError)."""
    pairs = {}
    for value in values or ():
        name, sep, model = value.partition("=")
        if not (sep and name and model):
            raise ConfigError(f"--teacher-model {value!r}: expected GENERATOR=MODEL, e.g. gemma-2b-it=google/gemma-2b")
        pairs[name] = model
    return pairs


def cmd_demo(args: argparse.Namespace) -> int:
    from car_hf.publishing.folders import ranking_markdown
    from car_hf.demo import run_demo

    start = time.perf_counter()
    result = run_demo(args.output_dir, config=config_from_args(args), zoo=args.zoo, max_examples=args.max_examples,
                      confidence=args.confidence, seed=args.seed, include_reference=args.include_reference)
    excluded = result.table.attrs["car"].get("excluded_reference_generators")
    from car_hf.ranking.audit import audit_markdown

    print(ranking_markdown(result.table))
    print("\n" + audit_markdown(result.table))
    print()
    print(result.summary())
    if excluded:
        print(f"left out (the judge's reference: constant preference): {', '.join(excluded)}")
    print(f"\nwrote {args.output_dir}/: leaderboard.md, leaderboard.csv, car_config.json, ranking.png, scored/ "
          f"in {time.perf_counter() - start:.0f} s")
    print(f"publish: car-hf push {args.output_dir} <namespace>/<name> [--dry-run FOLDER]")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from car_hf.publishing import hub
    from car_hf.training.callbacks import read_selection_summary
    from car_hf.publishing.folders import read_ranking

    hub.check_repo_id(args.repo_id)  # before a dry run writes anything
    folder = Path(args.path)
    common = {"private": args.private, "revision": args.revision, "commit_message": args.commit_message}
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        base_model = args.base_model or _trained_base_model(folder)
        summary = read_selection_summary(folder)  # any selection mode, recorded by car_hf's Trainer callback
        copy = Path(args.dry_run) if args.dry_run else None
        if copy is not None:  # the exact folder: a copy with the card written in, as push_model would send it
            import shutil

            if copy.exists() and any(copy.iterdir()):
                raise ConfigError(f"--dry-run {copy} exists and is not empty: remove it or choose another folder")
            skipped = shutil.ignore_patterns("checkpoint-*", "_*", ".*")  # what push_model does not upload
            folder = Path(shutil.copytree(folder, copy, ignore=skipped, dirs_exist_ok=True))
        try:
            result = hub.push_model(folder, args.repo_id, base_model=base_model, dataset_repo=args.dataset_repo,
                                    selection_summary=summary, dry_run=copy is not None, **common)
        except BaseException:
            if copy is not None:  # a refused dry run leaves nothing behind, so the same command can be re-run
                shutil.rmtree(copy, ignore_errors=True)
            raise
    elif (folder / "matrix.json").exists() and not (folder / "leaderboard.csv").exists():  # several students
        from car_hf.core.data import load_data, read_config
        from car_hf.ranking.matrix import Matrix

        plot = folder / "matrix.png"
        result = hub.push_dataset(load_data(str(folder / "scored")), args.repo_id,
                                  scoring_config=read_config(str(folder / "scored")), matrix=Matrix.read(folder),
                                  plot=plot if plot.exists() else None, dry_run=args.dry_run, license=args.license,
                                  **common)
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
