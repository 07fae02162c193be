"""The simulated labeler: ranks a prompt's sampled answers as InstructGPT's labelers did, with the suite's verifier
standing in for their judgement, and turns the ranking into comparisons.

InstructGPT's labelers saw K = 4–9 answers of the SFT model to one prompt and ranked them; every one of the C(K, 2)
pairs of the ranking became a comparison (Ouyang et al. 2022, section 3.5). `simulated_labeler` does the same for the
suite's prompts, whose `check` (the JSON spec `verify` reads) says exactly which answers are right:

1. **The verifier first.** An answer that passes its check ranks above every answer that fails it.
2. **Then preferences people show**, in this order:
   - among passing answers, the shorter wins: the verifier lets harmless decoration pass (a trailing period, quotes,
     a code fence around JSON), and a labeler prefers the answer without it;
   - among failing answers, a *well-formed* one (the shape the prompt asked for: a number where a number was asked,
     one word, yes or no, a JSON object with the asked keys, a list of the asked style and length, the reference's
     word count and case) ranks above one that ignores the asked format, answers with a preamble or rambles; then the
     shorter wins. A wrong value in the asked form is the nearer miss: the labeler
     guidelines put following the instruction's explicit constraints first;
   - what is still tied (two wrong numbers) is ordered at random (seeded).
3. **People disagree.** Each pairwise judgement is flipped with probability `disagreement`: the pair says the worse
   answer is chosen (`flipped: true` in the row, which a user with real labels will not have). InstructGPT's training
   labelers agreed with each other on 72.6 % of comparisons. If each of two labelers flips a judgement independently
   with probability p, they agree on (1 − p)² + p² of them, so 72.6 % gives p = (1 − √(2·0.726 − 1)) / 2 ≈ 0.16: the
   default. It counts every disagreement as an error, where some are taste (two answers equally good), so it is the
   upper end of the noise a real labeler adds; with a measured agreement rate a, use (1 − √(2a − 1)) / 2.

Identical answers (the same text after stripping surrounding whitespace) are ranked once, so they give no pair: a
prompt whose K answers hold D distinct ones gives C(D, 2) comparisons. An empty answer (the model ended its turn at
once) is left out: there is nothing to read, and the comparison loaders refuse an empty answer.

With real labelers, replace this function (`run_collect_comparisons(config, labeler=...)`) or skip the stage and
give `hf-instruct reward` your comparisons file; it reads the same columns.
"""

import json
import random
import re
from dataclasses import dataclass

from .suite.verifiers import NUMBER, json_object, list_items, normalise, verify

DEFAULT_DISAGREEMENT = 0.16  # InstructGPT's 72.6 % agreement between two labelers who err independently (above)
ONE_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)?")


@dataclass(frozen=True)
class RankedAnswer:
    """One distinct answer as the labeler ranked it: `rank` 1 is the best."""

    text: str
    rank: int
    passes: bool
    well_formed: bool


@dataclass(frozen=True)
class Comparison:
    """One pairwise judgement: `chosen` over `rejected`; `flipped` when it goes against the labeler's ranking."""

    chosen: RankedAnswer
    rejected: RankedAnswer
    flipped: bool


def well_formed(check: dict, answer: str) -> bool:
    """Whether `answer` has the shape the prompt asked for, whatever its value (see the module docstring)."""
    text = normalise(answer, check.get("case", False))
    kind = check["kind"]
    if kind == "number":
        return NUMBER.fullmatch(text) is not None
    if kind == "yes_no":
        return text in ("yes", "no")
    if kind == "one_word":
        return ONE_WORD.fullmatch(text) is not None
    if kind == "json":
        value = json_object(answer)
        return value is not None and value.keys() == check["answer"].keys()
    if kind == "list":
        parsed = list_items(answer)
        count = len(check["items"]) if "items" in check else check["count"]
        return parsed is not None and check["style"] in ("any", parsed[0]) and len(parsed[1]) == count
    reference = normalise(check["answer"], check.get("case", False))  # exact: the reference's word count and case
    same_case = not check.get("case") or (text.isupper(), text.islower()) == (reference.isupper(), reference.islower())
    return len(text.split()) == len(reference.split()) and same_case


def rank_answers(answers: list[str], check: str | dict, rng: random.Random) -> list[RankedAnswer]:
    """The distinct non-empty answers, best first: passing above failing, then the preferences of the module docstring,
    then one draw of `rng` per distinct answer (in the order they first appear) for what is still tied."""
    check = json.loads(check) if isinstance(check, str) else check
    distinct = [text for text in dict.fromkeys(answer.strip() for answer in answers) if text]
    keys = []
    for text in distinct:
        passes = verify(check, text)
        shaped = passes or well_formed(check, text)
        tier = 0 if passes else 1 if shaped else 2
        keys.append((tier, len(" ".join(text.split())), rng.random(), text, passes, shaped))
    return [
        RankedAnswer(text=text, rank=rank, passes=passes, well_formed=shaped)
        for rank, (*_, text, passes, shaped) in enumerate(sorted(keys), start=1)
    ]


def simulated_labeler(
    answers: list[str], check: str | dict, rng: random.Random, disagreement: float = DEFAULT_DISAGREEMENT
) -> list[Comparison]:
    """Every pair of the ranked distinct `answers` to one prompt, the better one chosen, each judgement flipped with
    probability `disagreement` (one draw of `rng` per pair, in rank order, whatever the rate)."""
    ranked = rank_answers(answers, check, rng)
    comparisons = []
    for i, better in enumerate(ranked):
        for worse in ranked[i + 1 :]:
            if rng.random() < disagreement:
                comparisons.append(Comparison(chosen=worse, rejected=better, flipped=True))
            else:
                comparisons.append(Comparison(chosen=better, rejected=worse, flipped=False))
    return comparisons
