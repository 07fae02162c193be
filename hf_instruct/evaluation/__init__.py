"""Evaluation: batched chat generation, exact scoring on the embedded suite, metrics as `evaluate` modules."""

from .best_of_n import BestOfN, best_of_n_answers
from .callback import InstructionAccuracyCallback
from .evaluator import evaluate_model, load_scored_examples, suite_examples, write_results
from .generation import generate_answers, load_chat_model
from .metric_modules import load_metric, metric_path

__all__ = [
    "BestOfN",
    "InstructionAccuracyCallback",
    "best_of_n_answers",
    "evaluate_model",
    "generate_answers",
    "load_chat_model",
    "load_metric",
    "load_scored_examples",
    "metric_path",
    "suite_examples",
    "write_results",
]
