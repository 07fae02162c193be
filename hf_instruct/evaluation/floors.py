"""Trivial-rule floors: what answers that need no model score on each held-out family, so a model's accuracy is read
against what guessing already gets (a yes/no question is half right by "Yes", a choice between two options half
right by the first one).

Each rule answers from the example's structured fields, never from parsing its prompt, so a rephrased prompt
cannot break it: a constant (one of the family's three most common reference answers in the training demonstrations,
"Yes", "No"), or the first or last of the options or list items the question gives (the suite's `options` field), as it
is, in capitals, its first letter or its letter count (the operations the suite's compositions ask for). The best
rule of a family on the scored rows is its floor (chosen on those rows: a generous floor); a split's floor is the
row-weighted mean of its families' floors.
"""

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from ..data.suite import verify

COMMON = 3  # how many of a family's most common training answers serve as constants
# what a rule does to an option it picks
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "": str,
    " in capitals": str.upper,
    ", first letter": lambda option: option[:1],
    ", letter count": lambda option: str(len(option)),
}


def common_answers(demonstrations: Iterable[dict]) -> dict[str, list[str]]:
    """Family -> its most common reference answers (the last assistant turn) in the training demonstrations, most
    common first, and "+<operation>" -> those of every family ending in that operation, for families never trained
    (held-out compositions take the answers their operation gives in training). Ties go to the answer seen first."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for row in demonstrations:
        answer = row["messages"][-1]["content"]
        answers[row["family"]][answer] += 1
        answers["+" + operation(row["family"])][answer] += 1
    return {key: [answer for answer, _ in counts.most_common(COMMON)] for key, counts in answers.items()}


def operation(family: str) -> str:
    """The last part of a family's name: the operation of a composition ("knowledge+uppercase" -> "uppercase")."""
    return family.rsplit("+", 1)[-1]


def rule_answers(row: dict, common: dict[str, list[str]]) -> dict[str, str]:
    """Rule name -> the answer that rule gives to `row` (a record with `family`, optionally `options`): 'constant
    "6"', "first option", "last option, first letter", ..."""
    constants = [*common.get(row["family"], common.get("+" + operation(row["family"]), [])), "Yes", "No"]
    answers = {f'constant "{constant}"': constant for constant in constants}
    options = row.get("options") or []
    for position, option in (("first", options[0]), ("last", options[-1])) if options else ():
        for suffix, transform in TRANSFORMS.items():
            answers[f"{position} option{suffix}"] = transform(str(option))
    return answers


def family_floors(examples: Iterable[dict], demonstrations: Iterable[dict]) -> dict[str, dict]:
    """Family -> {"floor": the best rule's accuracy, "rule": its name, "examples": rows} on the scored `examples`
    (records with `family`, `check` and optionally `options`); a rule that has no answer for a row counts it wrong."""
    common = common_answers(demonstrations)
    wins: dict[str, Counter] = defaultdict(Counter)
    rows: Counter = Counter()
    for row in examples:
        rows[row["family"]] += 1
        for rule, answer in rule_answers(row, common).items():
            wins[row["family"]][rule] += verify(row["check"], answer)
    floors = {}
    for family in sorted(rows):
        rule, right = max(wins[family].items(), key=lambda item: item[1])  # the first of equals: the order above
        floors[family] = {"floor": right / rows[family], "rule": rule, "examples": rows[family]}
    return floors


def split_floor(floors: dict[str, dict]) -> float:
    """A split's floor: each family's best rule, weighted by the family's rows."""
    rows = sum(family["examples"] for family in floors.values())
    return sum(family["floor"] * family["examples"] for family in floors.values()) / rows
