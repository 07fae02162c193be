"""Reward-model win rate: how often answers A beat answers B to the same prompts, as a trained reward model judges.

It scores each (prompt, answer) exactly as the reward model was trained to read it: rendered with its tokenizer's chat
template, right-padded, and read at the last real token.
"""

import datasets
import evaluate

from hf_instruct.utils import chat_rewards  # importing hf_instruct also registers `instructgpt` models

_DESCRIPTION = "Share of prompts where answer A gets a higher reward than answer B (ties count half)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): answers A.
    references (list of str): answers B, to the same prompts.
    prompts (list of str or of chat messages): the prompt of each pair; a list of messages gets the answer appended
        as the assistant turn. Needed with `reward_model`.
    reward_model (str): folder (or Hub id) of a 1-label sequence-classification model and its tokenizer.
    batch_size (int, default 16): texts scored per forward pass.
    scores_a, scores_b (list of float, optional): precomputed rewards, used instead of a reward model.
Returns:
    win_rate (float): (wins of A + 0.5 * ties) / pairs.
    mean_reward_a, mean_reward_b (float): the mean reward of each side.
Example:
    >>> metric = evaluate.load(metric_path("win_rate"))
    >>> metric.compute(predictions=["a", "b"], references=["c", "d"], scores_a=[1.0, 0.0], scores_b=[0.0, 0.0])
    {'win_rate': 0.75, 'mean_reward_a': 0.5, 'mean_reward_b': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self, predictions, references, prompts=None, reward_model=None, batch_size=16, scores_a=None, scores_b=None
    ):
        if scores_a is None and scores_b is None:
            if reward_model is None or prompts is None:
                raise ValueError(
                    "win_rate needs `prompts` and a `reward_model`, or precomputed `scores_a` and `scores_b`."
                )
            if len(prompts) != len(predictions):
                raise ValueError(f"Got {len(predictions)} answer pairs but {len(prompts)} prompts.")
            scores = chat_rewards(reward_model, list(prompts) * 2, predictions + references, batch_size)
            scores_a, scores_b = scores[: len(predictions)], scores[len(predictions) :]
        elif scores_a is None or scores_b is None or reward_model is not None:
            raise ValueError("Pass either a `reward_model` or both `scores_a` and `scores_b`.")
        n = len(predictions)
        if not len(scores_a) == len(scores_b) == n:
            raise ValueError(f"Got {n} answer pairs but {len(scores_a)} scores_a and {len(scores_b)} scores_b.")
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b, strict=True))
        return {"win_rate": wins / n, "mean_reward_a": sum(scores_a) / n, "mean_reward_b": sum(scores_b) / n}
