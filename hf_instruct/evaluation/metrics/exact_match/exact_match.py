"""Exact match after light normalisation, so that case and stray whitespace do not decide if an answer is right."""

import re
import string

import datasets
import evaluate

_DESCRIPTION = (
    "Share of predictions equal to their reference once stripped, whitespace-collapsed and (by default) lowercased."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's answers.
    references (list of str): one reference answer per prediction.
    ignore_case (bool, default True): compare case-insensitively.
    ignore_punctuation (bool, default False): drop ASCII punctuation before comparing.
Returns:
    exact_match (float): matching predictions / predictions.
Example:
    >>> metric = evaluate.load(metric_path("exact_match"))
    >>> metric.compute(predictions=["  Paris "], references=["paris"])
    {'exact_match': 1.0}
"""

_PUNCTUATION = str.maketrans("", "", string.punctuation)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=True, ignore_punctuation=False):
        def normalise(text):
            if ignore_punctuation:
                text = text.translate(_PUNCTUATION)  # before collapsing, so "a , b" becomes "a b"
            text = re.sub(r"\s+", " ", text).strip()
            return text.lower() if ignore_case else text

        matches = [normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True)]
        return {"exact_match": sum(matches) / len(matches)}
