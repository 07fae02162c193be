"""Evaluation: batched chat generation, exact scoring on the embedded suite, metrics as `evaluate` modules."""

from .callback import InstructionAccuracyCallback
from .evaluator import evaluate_model, load_scored_examples, suite_examples, write_results
from .generation import generate_answers, load_chat_model
from .metric_modules import load_metric, metric_path

__all__ = [
    "InstructionAccuracyCallback",
    "evaluate_model",
    "generate_answers",
    "load_chat_model",
    "load_metric",
    "load_scored_examples",
    "metric_path",
    "suite_examples",
    "write_results",
]
