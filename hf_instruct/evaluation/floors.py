"""Trivial-rule floors: what answers that need no model score on each held-out family, so a model's accuracy is read
against what guessing already gets (a yes/no question is half right by "Yes", a choice between two options half
right by the first one).

Each rule answers from the structured fields of the example's `check` (what its prompt shows, recorded by the suite:
`options`, `items`, `word`), never from parsing its prompt, so a rephrased prompt cannot break it: a constant (one of
the family's three most common reference answers in the training demonstrations, "Yes", "No"); the first or last of
the `options` or `items`, as it is, in capitals, its first letter or its letter count (the operations the suite's
compositions ask for); the `word` echoed, or its letter count (except where that is the family's task itself). The
best rule of a family on the scored rows is its floor (chosen on those rows: a generous floor); a split's floor is
the row-weighted mean of its families' floors.
"""

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from ..data.suite import verify

COMMON = 3  # how many of a family's most common training answers serve as constants
# what a rule does to a value it picks
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "": str,
    " in capitals": str.upper,
    ", first letter": lambda value: value[:1],
    ", letter count": lambda value: str(len(value)),
}
LISTS = {"options": "option", "items": "item"}  # a check's list fields -> the name a rule gives one of their values
WORD_TRANSFORMS = ("", ", letter count")  # what a rule does to the check's `word`
# families whose task is a word transform of the word they name: that transform is their answer, not a trivial rule
# (in a composition such as `one_word+count_letters` the word named is not the one whose letters are counted)
TASKS = {"count_letters": (", letter count",), "uppercase": (" in capitals",), "first_letter": (", first letter",)}


def common_answers(demonstrations: Iterable[dict]) -> dict[str, list[str]]:
    """Family -> its most common reference answers (the last assistant turn) in the training demonstrations, most
    common first, and "+<operation>" -> those of every family ending in that operation, for families never trained
    (held-out compositions take the answers their operation gives in training). Ties go to the answer seen first.
    A demonstration its writer got wrong (a `flaw` recorded, see data/suite/flaws.py) is no reference answer: the
    floors do not depend on how flawed the demonstrations are."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for row in demonstrations:
        if row.get("flaw"):
            continue
        answer = row["messages"][-1]["content"]
        answers[row["family"]][answer] += 1
        answers["+" + operation(row["family"])][answer] += 1
    return {key: [answer for answer, _ in counts.most_common(COMMON)] for key, counts in answers.items()}


def operation(family: str) -> str:
    """The last part of a family's name: the operation of a composition ("knowledge+uppercase" -> "uppercase")."""
    return family.rsplit("+", 1)[-1]


def rule_answers(family: str, check: dict, common: dict[str, list[str]]) -> dict[str, str]:
    """Rule name -> the answer that rule gives to an example of `family` with the parsed `check` (its `options`,
    `items` and `word`, where the prompt shows them): 'constant "6"', "first option", "last item, first letter",
    "word, letter count", ..."""
    constants = [*common.get(family, common.get("+" + operation(family), [])), "Yes", "No"]
    answers = {f'constant "{constant}"': constant for constant in constants}
    for field, noun in LISTS.items():
        values = check.get(field) or []
        for position, value in (("first", values[0]), ("last", values[-1])) if values else ():
            for suffix, transform in TRANSFORMS.items():
                answers[f"{position} {noun}{suffix}"] = transform(str(value))
    if "word" in check:
        for suffix in WORD_TRANSFORMS:
            if suffix in TASKS.get(family, ()):  # the rule would do the task itself: no floor
                continue
            answers[f"word{suffix}"] = TRANSFORMS[suffix](check["word"])
    return answers


def family_floors(examples: Iterable[dict], demonstrations: Iterable[dict]) -> dict[str, dict]:
    """Family -> {"floor": the best rule's accuracy, "rule": its name, "examples": rows} on the scored `examples`
    (records with `family` and `check`); a rule that has no answer for a row counts it wrong."""
    common = common_answers(demonstrations)
    wins: dict[str, Counter] = defaultdict(Counter)
    rows: Counter = Counter()
    for row in examples:
        rows[row["family"]] += 1
        check = json.loads(row["check"])
        for rule, answer in rule_answers(row["family"], check, common).items():
            wins[row["family"]][rule] += verify(check, answer)
    floors = {}
    for family in sorted(rows):
        rule, right = max(wins[family].items(), key=lambda item: item[1])  # the first of equals: the order above
        floors[family] = {"floor": right / rows[family], "rule": rule, "examples": rows[family]}
    return floors


def split_floor(floors: dict[str, dict]) -> float:
    """A split's floor: each family's best rule, weighted by the family's rows."""
    rows = sum(family["examples"] for family in floors.values())
    return sum(family["floor"] * family["examples"] for family in floors.values()) / rows
