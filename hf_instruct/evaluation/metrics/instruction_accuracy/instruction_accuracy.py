"""Instruction accuracy: the share of answers that their example's verifier accepts, overall and per task family.

Each reference is a verification spec of the embedded suite (`hf_instruct.data.suite`, the `check` column): exact,
number, one word, JSON, list, yes/no… so an answer is right or wrong, with no judge model and no string overlap.
"""

from collections import defaultdict

import datasets
import evaluate

from hf_instruct.data.suite import verify

_DESCRIPTION = "Share of answers accepted by their example's verifier (hf-instruct suite), overall and per family."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's answers.
    references (list of str): the examples' verification specs (JSON strings, the suite's `check` column).
    families (list of str, optional): the task family of each example, for per-family accuracy.
Returns:
    accuracy (float): accepted answers / answers.
    per_family (dict of str to float): the same per family (only when families are given).
Example:
    >>> metric = evaluate.load(metric_path("instruction_accuracy"))
    >>> metric.compute(predictions=["42"], references=['{"kind": "number", "answer": 42}'])["accuracy"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InstructionAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, families=None):
        correct = [verify(check, answer) for answer, check in zip(predictions, references, strict=True)]
        result = {"accuracy": sum(correct) / len(correct) if correct else 0.0}
        if families is not None:
            by_family = defaultdict(list)
            for family, ok in zip(families, correct, strict=True):
                by_family[family].append(ok)
            result["per_family"] = {family: sum(oks) / len(oks) for family, oks in sorted(by_family.items())}
        return result
