"""How sure a held-out comparison is: intervals for accuracies, paired differences, and win rates by the verifier.

A split holds a few hundred rows, so an accuracy moves by several points between draws: each accuracy gets a 95 %
Wilson interval, and a model is compared with another on the SAME prompts (a paired difference: its bootstrap
interval over prompts and McNemar's exact test), which is far tighter than comparing two independent intervals.
The win rate of one model over another is judged by the suite's exact verifier, as the human labelers judged it in
InstructGPT, on the prompts where the two answers differ; the reward model's verdict on those pairs is reported
beside it, with how often it agrees with the verifier.
"""

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval
RESAMPLES = 10_000  # bootstrap resamples of a paired difference
SEED = 0  # the bootstrap's seed: the same inputs always give the same interval (a re-run changes no file)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n`: unlike the normal approximation it stays inside
    [0, 1] and keeps its coverage near 0 and 1, where instruction accuracies often sit."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n > 0, got {successes} of {n}.")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 or n successes the bound is exactly 0 or 1 (the formula leaves a rounding error there)
    return 0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for `b` prompts that only the first model gets right and `c` that only the
    second does: under "equally good", each of the b + c discordant prompts goes either way with probability 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(
    correct: Sequence[bool], baseline: Sequence[bool], resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Accuracy of `correct` minus that of `baseline`, verdicts on the same prompts in the same order:
    {"difference", "interval": [low, high] (95 %, percentile bootstrap over prompts), "p" (McNemar, exact)}.
    A resample of prompts only changes how many of them fall in each (model right, baseline right) cell, so it is
    drawn as multinomial counts: the same distribution as resampling rows, at no cost per row."""
    if len(correct) != len(baseline) or not correct:
        raise ValueError(
            f"paired_difference: need verdicts on the same prompts, got {len(correct)} and {len(baseline)}."
        )
    n = len(correct)
    b = sum(1 for x, y in zip(correct, baseline, strict=True) if x and not y)
    c = sum(1 for x, y in zip(correct, baseline, strict=True) if y and not x)
    counts = np.random.default_rng(seed).multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=resamples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": (b - c) / n, "interval": [float(low), float(high)], "p": mcnemar_p(b, c)}


def pairwise_win_rates(
    answers: Sequence[str],
    baseline_answers: Sequence[str],
    correct: Sequence[bool],
    baseline_correct: Sequence[bool],
    rewards: Sequence[float] | None = None,
    baseline_rewards: Sequence[float] | None = None,
) -> dict:
    """Win rates of the answers over the baseline's to the same prompts, on the prompts where the two answers differ
    (identical answers tell nothing; ties count half): {"pairs": how many differ, "win_rate": the verifier's (a right
    answer beats a wrong one, else a tie), and with rewards "reward_model_win_rate" and "reward_model_agreement"
    (on the pairs the verifier decides, the share where the reward model prefers the right answer, its ties half;
    None when the verifier decides none)}. With no differing pair every rate is 0.5: the two models answer alike."""
    columns = [answers, baseline_answers, correct, baseline_correct]
    if rewards is not None or baseline_rewards is not None:
        if rewards is None or baseline_rewards is None:
            raise ValueError("pairwise_win_rates: pass both `rewards` and `baseline_rewards`, or neither.")
        columns += [rewards, baseline_rewards]
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"pairwise_win_rates: columns of different lengths {[len(c) for c in columns]}.")
    differ = [i for i, (a, b) in enumerate(zip(answers, baseline_answers, strict=True)) if a != b]
    result = {"pairs": len(differ), "win_rate": _mean([_score(correct[i], baseline_correct[i]) for i in differ])}
    if rewards is not None:
        result["reward_model_win_rate"] = _mean([_score(rewards[i], baseline_rewards[i]) for i in differ])
        decided = [i for i in differ if correct[i] != baseline_correct[i]]
        agree = [
            _score(rewards[i], baseline_rewards[i]) if correct[i] else _score(baseline_rewards[i], rewards[i])
            for i in decided
        ]
        result["reward_model_agreement"] = sum(agree) / len(agree) if agree else None
    return result


def _score(a: float, b: float) -> float:
    """1 when a wins, 0.5 on a tie, 0 when b wins (booleans: right beats wrong)."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.5
