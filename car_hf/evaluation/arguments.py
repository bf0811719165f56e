"""The scorers of ``recipes/evaluate_student.py``, ``recipes/pilot.py`` and ``car-hf pilot`` as flat command-line/YAML
options: :class:`EvaluationArguments`, turned into an :class:`~car_hf.evaluation.student.EvaluationConfig` by
:meth:`EvaluationArguments.config`. Apart from the evaluation itself so that parsing (and ``--help``) imports no
torch, datasets or pandas.

Example:
    >>> from car_hf.generation.teacher import TeacherConfig
    >>> config = EvaluationArguments(metric="answer_match", n_bootstrap=200).config(TeacherConfig(max_new_tokens=8))
    >>> config.metric.endswith("answer_match.py"), config.n_bootstrap, config.generation.max_new_tokens
    (True, 200, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from car_hf.core.errors import ConfigError
from car_hf.generation.tasks import ANSWER_MATCH
from car_hf.generation.teacher import TeacherConfig

if TYPE_CHECKING:
    from car_hf.evaluation.student import EvaluationConfig


@dataclass
class EvaluationArguments:
    """The scorers as flat command-line/YAML options (``recipes/evaluate_student.py``, ``recipes/pilot.py``)."""

    reward: str | None = field(default=None, metadata={"help": "Reward model (Hub id, folder) or module:function."})
    metric: str | None = field(
        default=None, metadata={"help": "An evaluate module (name or path); 'answer_match': car_hf's offline one."})
    answer_column: str = field(default="answer", metadata={"help": "Column of reference answers (metric)."})
    metric_key: str = field(default="exact_match", metadata={"help": "The metric's result key (one value per item)."})
    extractor: str | None = field(
        default="car_hf.generation.tasks:extract_answer",
        metadata={"help": "module:function extracting the answer the metric compares ('none': the whole text)."})
    judge_base_url: str | None = field(default=None, metadata={"help": "The judge's OpenAI-compatible endpoint."})
    judge_model: str | None = field(default=None, metadata={"help": "The model name the judge endpoint serves."})
    judge_api_key_env: str | None = field(default=None, metadata={"help": "NAME of the variable holding its token."})
    reference_column: str = field(default="reference", metadata={"help": "Reference outputs the judge compares to."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of held-out items (0: none)."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the intervals."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of the judge's order."})
    batch_rows: int = field(default=16, metadata={"help": "Held-out rows per generation call (transformers engine), "
                                                          "length-sorted: the unit of progress."})
    harness_tasks: list[str] | None = field(
        default=None, metadata={"help": "lm-evaluation-harness tasks run on the student in memory (measure "
                                        "'harness': the mean of per-task primary metrics; 'harness:<task>')."})
    harness_include_path: str | None = field(
        default=None, metadata={"help": "A folder of local harness task YAML files (as lm_eval --include_path)."})
    harness_chat_template: bool = field(
        default=True, metadata={"help": "Harness prompts in the student's chat template (false: the raw task text)."})

    def config(self, generation: TeacherConfig) -> EvaluationConfig:
        from car_hf.evaluation.student import EvaluationConfig, JudgeConfig

        if bool(self.judge_base_url) != bool(self.judge_model):
            raise ConfigError("a judge needs both judge_base_url and judge_model")
        judge = JudgeConfig(self.judge_base_url, self.judge_model, self.judge_api_key_env,
                            self.reference_column) if self.judge_base_url else None
        metric = ANSWER_MATCH if self.metric == "answer_match" else self.metric
        extractor = None if self.extractor in (None, "none") else self.extractor
        return EvaluationConfig(generation, self.reward, metric, self.answer_column, self.metric_key, extractor,
                                judge, self.n_bootstrap, self.confidence, self.eval_seed, self.batch_rows,
                                harness_tasks=self.harness_tasks, harness_include_path=self.harness_include_path,
                                harness_chat_template=self.harness_chat_template)
