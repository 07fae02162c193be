"""Instruction accuracy during training: a `TrainerCallback` that answers a few held-out instructions at every
evaluation of SFT or PPO, so the log shows the model learning to follow instructions, not only its loss."""

import datasets
from transformers import TrainerCallback

from .generation import generate_answers
from .metric_modules import load_metric


class InstructionAccuracyCallback(TrainerCallback):
    """Adds `eval_instruction_accuracy` (and per family) to every evaluation's metrics and to the log history.

    `examples`: suite-style rows with `messages` (ending with the reference answer), `family` and `check`.
    """

    def __init__(self, examples: datasets.Dataset, max_new_tokens: int = 32, batch_size: int = 16):
        self.examples, self.max_new_tokens, self.batch_size = examples, max_new_tokens, batch_size
        self.metric = load_metric("instruction_accuracy")

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        policy = getattr(model, "policy", model)  # PPO evaluates a policy + value model pair
        was_training = policy.training
        prompts = [messages[:-1] for messages in self.examples["messages"]]
        answers = generate_answers(
            policy.eval(), processing_class, prompts, self.max_new_tokens, self.batch_size, show_progress=False
        )
        policy.train(was_training)
        scores = self.metric.compute(
            predictions=[a[0] for a in answers], references=self.examples["check"], families=self.examples["family"]
        )
        accuracy = {"eval_instruction_accuracy": scores["accuracy"]}
        accuracy.update({f"eval_instruction_accuracy/{f}": value for f, value in scores["per_family"].items()})
        metrics.update(accuracy)  # returned by Trainer.evaluate(): lands in all_results.json and the card
        state.log_history.append({**accuracy, "step": state.global_step})
