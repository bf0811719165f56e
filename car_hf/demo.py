"""``car-hf demo``: rank the AlpacaEval generators for a base model, with the judge's preference as reward.

The data: 11 generators' answers to the 805 AlpacaEval instructions, each with the weighted GPT-4-turbo
judge's preference over the reference answer (``judge_preference``, in [0, 1]). The generator that *is*
the reference (its preference is constant) is left out: a constant says nothing about its quality.
Where the local zoo file is absent, the public AlpacaEval outputs and GPT-4 annotations are read from the
Hub dataset ``tatsu-lab/alpaca_eval`` (AlpacaEval 1: GPT-4 judge against text-davinci-003).

Example:
    >>> from car_hf.demo import run_demo, zoo_from_alpaca_eval
    >>> outputs = [{"instruction": "Say hi.", "output": "Hi!", "generator": "g1"},
    ...            {"instruction": "Say hi.", "output": "Hello.", "generator": "g2"}]
    >>> judged = [{"instruction": "Say hi.", "generator_2": "g1", "output_2": "Hi!", "preference": 1.75}]
    >>> [(row["generator"], row["judge_preference"]) for row in zoo_from_alpaca_eval(outputs, judged)]
    [('g1', 0.75), ('g2', None)]
    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp())  # doctest: +SKIP
    >>> result.table[["generator", "car", "p_best"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import datasets

from car_hf.ranking.results import AdaptiveResult
from car_hf.ranking.adaptive import rank_adaptive
from car_hf.core.config import DEMO_MAX_LENGTH, CARConfig
from car_hf.publishing.folders import write_ranking
from car_hf.ranking.audit import audit_leaderboard
from car_hf.scoring.scorer import CARScorer

ZOO_FILE = Path("alpaca_eval_zoo") / "zoo.jsonl.gz"
HUB_REPO = "tatsu-lab/alpaca_eval"
HUB_OUTPUTS = "alpaca_eval_all_outputs.json"
HUB_ANNOTATIONS = "alpaca_eval_annotations_alpaca_eval_gpt4.json"


def find_local_zoo() -> Path | None:
    """``$CAR_HF_ZOO``, else ``shared/data/alpaca_eval_zoo/zoo.jsonl.gz`` in or above the working directory."""
    if os.environ.get("CAR_HF_ZOO"):
        return Path(os.environ["CAR_HF_ZOO"])
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / "shared" / "data" / ZOO_FILE
        if candidate.exists():
            return candidate
    return None


def zoo_from_alpaca_eval(outputs: Sequence[dict], annotations: Sequence[dict]) -> list[dict[str, Any]]:
    """Long zoo rows from AlpacaEval's published outputs and pairwise annotations.

    Each annotation compares ``output_1`` (the reference) with ``output_2`` of ``generator_2``;
    ``preference`` is 1 (reference better) to 2 (generator better), so ``judge_preference = preference - 1``.
    Outputs without an annotation keep ``judge_preference = None`` (NaN reward, counted as unscored).
    """
    judged = {(a["instruction"], a["generator_2"], a["output_2"]): a.get("preference") for a in annotations}
    ids: dict[str, int] = {}
    rows = []
    for record in outputs:
        instruction_id = ids.setdefault(record["instruction"], len(ids))
        preference = judged.get((record["instruction"], record["generator"], record["output"]))
        rows.append({"instruction_id": instruction_id, "dataset": record.get("dataset"),
                     "instruction": record["instruction"], "generator": record["generator"],
                     "output": record["output"],
                     "judge_preference": None if preference is None else float(preference) - 1.0})
    return rows


def load_zoo(path: str | os.PathLike | None = None) -> datasets.Dataset:
    """The AlpacaEval generator zoo as a long Dataset: a local file if there is one, else the Hub."""
    local = Path(path) if path is not None else find_local_zoo()
    if local is not None:
        return datasets.load_dataset("json", data_files=str(local), split="train")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        files = [hf_hub_download(HUB_REPO, name, repo_type="dataset") for name in (HUB_OUTPUTS, HUB_ANNOTATIONS)]
    except (OSError, HfHubHTTPError) as error:  # offline, no network, or the Hub refused
        raise FileNotFoundError(
            f"no local zoo ($CAR_HF_ZOO is unset and there is no shared/data/{ZOO_FILE.as_posix()} in {Path.cwd()} "
            f"or above it) and the Hub copy ({HUB_REPO}) could not be read: {type(error).__name__}. "
            "Pass the zoo file (--zoo / path=) or allow Hub access."
        ) from error
    outputs, annotations = (json.loads(Path(f).read_text()) for f in files)
    return datasets.Dataset.from_list(zoo_from_alpaca_eval(outputs, annotations))


def reference_generators(
    ds: datasets.Dataset, by: str = "generator", reward_column: str = "judge_preference"
) -> list[str]:
    """Generators whose reward never varies: the judge's reference, not a generator to rank."""
    frame = ds.select_columns([by, reward_column]).to_pandas()
    spread = frame.groupby(by)[reward_column].agg(["min", "max", "count"])
    return sorted(spread.index[(spread["count"] > 1) & (spread["min"] == spread["max"])].tolist())


def run_demo(
    output_dir: str | os.PathLike = "car_demo",
    *,
    base_model: Any = None,
    config: CARConfig | None = None,
    zoo: str | os.PathLike | None = None,
    max_examples: int = 250,
    confidence: float = 0.95,
    seed: int = 0,
    include_reference: bool = False,
    **options: Any,
) -> AdaptiveResult:
    """Rank the zoo's generators for ``base_model`` adaptively and write the ranking folder.

    The scoring options are ``config`` (default: ``CARConfig(score_max_length=DEMO_MAX_LENGTH)``) updated by
    ``options`` (its fields or :func:`~car_hf.add_car`'s keywords: ``beta=``, ``max_length=`` ...); the reward is
    the judge's preference unless a reward model or column is set. ``base_model`` may also be a loaded
    ``(model, tokenizer)`` pair. Scores whole instructions in a seeded random order until the leader is decided at
    ``confidence`` or ``max_examples`` rows are scored (see :func:`car_hf.ranking.adaptive.rank_adaptive`); a killed run
    resumes from ``<output_dir>/checkpoint``. Writes ``leaderboard.md``, ``leaderboard.csv``,
    ``car_config.json``, ``ranking.png`` and ``scored/`` — the folder ``car-hf push`` publishes.
    """
    config = CARConfig.from_kwargs(config or CARConfig(score_max_length=DEMO_MAX_LENGTH), **options)
    if config.reward_model is None and config.reward_column is None:
        config = dataclasses.replace(config, reward_column="judge_preference")
    ds = load_zoo(zoo)
    excluded = [] if include_reference else reference_generators(ds)
    if excluded:
        keep = set(ds.unique("generator")) - set(excluded)
        ds = ds.filter(lambda values: [v in keep for v in values], input_columns="generator", batched=True)
    scorer = CARScorer(base_model, config=config)
    out = Path(output_dir)
    result = rank_adaptive(ds, scorer, beta=config.beta, reward_transform=config.reward_transform,
                           confidence=confidence, max_examples=max_examples, seed=seed, checkpoint=out / "checkpoint",
                           config=scorer.scoring_config() | {"excluded_reference_generators": excluded})
    result.table = audit_leaderboard(result.table, result.scored)  # the signal audit, as every leaderboard
    write_ranking(out, result.table, result.scored, examples=result.scored)
    return result
