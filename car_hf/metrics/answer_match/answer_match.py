"""``answer_match``: an ``evaluate`` metric for tasks with checkable answers (exact match after normalisation).

Shipped with car_hf as a local module, so it loads offline: ``evaluate.load(car_hf.rewards.ANSWER_MATCH)``.
Predictions and references are compared after :func:`normalize` (case, surrounding space and punctuation,
thousands separators, a trailing ``.0``); the score of each pair is 1.0 or 0.0, ``exact_match`` their mean.
"""

import re

import datasets
import evaluate

_DESCRIPTION = "Exact match of extracted answers after light normalisation (case, spaces, punctuation, 1,000 -> 1000)."
_KWARGS = """
Args:
    predictions (list of str): the extracted answers.
    references (list of str): the reference answers.
Returns:
    exact_match (float): the share of predictions equal to their reference after normalisation.
    scores (list of float): 1.0 or 0.0 per pair.
"""


def normalize(text: str) -> str:
    text = str(text).strip().lower().replace(",", "")
    text = re.sub(r"^[\s\"'`*(\[]+|[\s\"'`*.!?)\]]+$", "", text)
    return re.sub(r"^(-?\d+)\.0+$", r"\1", text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AnswerMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        scores = [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
