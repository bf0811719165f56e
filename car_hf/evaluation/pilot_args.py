"""The options of ``car-hf pilot`` and ``recipes/pilot.py``: :class:`PilotArguments` next to the scorers'
(``EvaluationArguments``), the students' generation (``TeacherConfig``), TRL's ``SFTConfig`` and ``ModelConfig``.

The pilot's ``SFTConfig`` is :class:`~car_hf.evaluation.pilot_sft.PilotSFTConfig` (TRL's, with a longer
``ddp_timeout``), in its own module: this one imports no TRL (nor torch), so ``car-hf pilot --help`` is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

@dataclass
class PilotArguments:
    """The pool, the held-out set, the teachers, the number of training instructions and the seeds (the options
    of ``car-hf pilot`` and ``recipes/pilot.py`` next to TRL's ``SFTConfig`` and ``ModelConfig``)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "The scored pool (long layout with a reward and base_loss): a file, a "
                                        "save_to_disk folder (e.g. recipes/score.py's output_dir/scored) or a Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    heldout_name: str | None = field(default=None, metadata={"help": "Held-out instructions (file, folder, Hub id)."})
    heldout_split: str = field(default="train", metadata={"help": "Split of the held-out dataset."})
    n_instructions: int = field(default=1000, metadata={"help": "Training instructions per teacher (the same ones)."})
    teachers: list[str] | None = field(
        default=None, metadata={"help": "Teachers to compare (default: CAR top 3, reward-only winner, CAR bottom)."})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "Training seeds: one student per teacher and seed, realized values averaged "
                                        "over seeds (default: the training seed alone)."})
    by: str = field(default="generator", metadata={"help": "The column naming each row's teacher."})
    reward_column: str = field(default="reward", metadata={"help": "The pool's column of rewards (CAR's reward)."})
    beta: float = field(default=1.0, metadata={"help": "CAR's beta for the prediction."})
    reward_transform: str = field(default="raise", metadata={"help": "CAR's reward transform (car_hf.core.car)."})
    measure: str | None = field(
        default=None, metadata={"help": "Realized measure: accuracy | reward | win_rate | lc_win_rate | harness | "
                                        "harness:<task> (default: the first the scorers give)."})
    measure_name: str | None = field(
        default=None, metadata={"help": "The measure's name in the report (default: 'accuracy' for a metric or a "
                                        "0/1 reward function, else the measure)."})


def pilot_parser(parser_class: type | None = None, **kwargs: Any) -> Any:
    """The ``TrlParser`` (or ``parser_class``, a subclass) of a pilot: :class:`PilotArguments`,
    ``EvaluationArguments`` (the scorers), ``TeacherConfig`` (the students' generation),
    :class:`~car_hf.evaluation.pilot_sft.PilotSFTConfig` and ``trl.ModelConfig``; ``--config`` reads a YAML file of them
    (command-line options override it).

    >>> args, scorers, generation, training_args, model_args = pilot_parser().parse_args_and_config(
    ...     ["--model_name_or_path", "student", "--seeds", "0", "1", "--metric", "answer_match", "--use_peft",
    ...      "--use_cpu", "--bf16", "false"])  # SFTConfig's default bf16 needs a GPU
    >>> args.seeds, scorers.metric, model_args.use_peft, training_args.ddp_timeout
    ([0, 1], 'answer_match', True, 21600)
    """
    from trl import ModelConfig, TrlParser

    from car_hf.evaluation.arguments import EvaluationArguments
    from car_hf.evaluation.pilot_sft import PilotSFTConfig
    from car_hf.generation.teacher import TeacherConfig

    return (parser_class or TrlParser)((PilotArguments, EvaluationArguments, TeacherConfig, PilotSFTConfig,
                                        ModelConfig), **kwargs)
