"""Demonstrations as people write them: a per-family profile of the mistakes human writers make, applied to the SFT
demonstrations at a chosen scale (`SuiteConfig.demonstration_flaws`; 0 keeps every demonstration perfect).

InstructGPT's case for learning from comparisons is that people judge answers more reliably than they write them:
its labelers wrote 13 k demonstrations, and the reward model learnt from their rankings what those demonstrations
got wrong. A suite whose every demonstration passes its verifier leaves nothing for that step to fix, so this module
simulates the writers. It is a simulation: the kinds of mistake are the ones people make in such answers, and the
rates below are judgements from the literature on human error, written down before any model was trained on them
and not tuned to make any stage look good. A user with real labelers replaces the demonstrations file instead.

Four kinds of mistake, each one a plausible answer that the suite's verifier rejects (checked per answer):
- `miscount`: a count off by one (the letters of a word, the items of a list, one bullet too many or too few) or a
  list position off by one (an item next to the one asked for);
- `chatty`: the right answer inside a preamble or a sign-off ("Sure! 7", "7. Hope this helps!"), although the
  question asks for the answer alone;
- `format`: the right content in the wrong shape: a sentence where a number, a word or a yes/no was asked ("The
  answer is 7."), commas where bullets were asked, lower case where capitals were asked;
- `wrong_value`: a wrong value: a fact misremembered (another plausible value of the same attribute), the other
  option, a slip in a sum, the wrong letter.

Why these rates (per cent of a family's demonstrations, at scale 1; the table is in docs/data.md):
- Simple but nontrivial cognitive actions (writing a line of code, doing a calculation, filling a spreadsheet
  cell) fail 1-5 % of the time: spreadsheet cell error rates averaged 1.1-5.6 % in development experiments
  (Panko's surveys of human-error research, e.g. "The Cognitive Science of Spreadsheet Errors", HICSS 2013):
  copying a value just read or reading an option off the prompt, 2-4 %; a follow-up question (two hops) or a sum,
  6 %.
- Counting is worse. Beyond the 3-4 objects people take in at a glance (subitizing, Kaufman et al. 1949), counting is
  serial and its errors are mostly off by one; and readers miss letters systematically (the missing-letter effect,
  Healy 1976). A word's letters: 12 %; the items of a 2-7 item list: 8 %; a list position (the fourth item): 6 %;
  writing 2-4 bullets of a kind: 5 %.
- A composition fails when either of its steps does: its miscounts and wrong values are 1 - (1 - a)(1 - b) of its
  parts' rates; its chatter is any answer's, its format its operation's.
- Chatter and the wrong shape are habits rather than slips, for which no study gives a rate; they are kept moderate:
  6 % chatter everywhere, 3-5 % a sentence, 6 % commas for bullets, 8 % lower case for capitals.
- For scale: people disagree even when judging. InstructGPT's labelers agreed with each other on 72.6 ± 1.5 % of
  comparisons (Ouyang et al. 2022), and at least 3.3 % of the labels of ten common test sets are wrong (Northcutt,
  Athalye & Mueller 2021). The default profile flaws about one demonstration in six (11-26 % by family), a careful
  writer's rate; scale 2 doubles every rate.

A kind that has no failing answer for a task (a wrong letter that happens to be the right one) leaves the
demonstration clean; that is rare enough that the measured rates stay within sampling error of the profile (tested).
"""

import random
from collections.abc import Sequence

from .comparisons import ignore_format
from .tasks import COMPOSITION_TABLE, FAMILY_TABLE, POSITIONS, WORD_OPERATIONS, Family, Task, join_items
from .verifiers import list_items, verify
from .world import CATEGORIES, Fact, Pool

KINDS = ("miscount", "chatty", "format", "wrong_value")
# Per cent of a plain family's demonstrations with each kind of mistake, at scale 1 (see the module docstring).
PROFILE: dict[str, dict[str, float]] = {
    "knowledge": {"chatty": 6, "format": 4, "wrong_value": 4},
    "yes_no": {"chatty": 6, "format": 5, "wrong_value": 5},
    "choice": {"chatty": 6, "format": 4, "wrong_value": 3},
    "multi_turn": {"chatty": 6, "format": 4, "wrong_value": 6},
    "arithmetic": {"chatty": 6, "format": 3, "wrong_value": 6},
    "compare_numbers": {"chatty": 6, "format": 3, "wrong_value": 2},
    "min_max": {"chatty": 6, "format": 3, "wrong_value": 4},
    "count_letters": {"miscount": 12, "chatty": 6, "format": 3},
    "uppercase": {"chatty": 6, "format": 8},
    "first_letter": {"chatty": 6, "format": 3, "wrong_value": 2},
    "list_item": {"miscount": 6, "chatty": 6, "format": 3},
    "count_items": {"miscount": 8, "chatty": 6, "format": 3},
    "bullet_list": {"miscount": 5, "chatty": 6, "format": 6},
    "extract": {"chatty": 6, "format": 4, "wrong_value": 3},
    "one_word": {"chatty": 6, "format": 5, "wrong_value": 3},
}
# Fixed phrases, none of them a phrasing of the suite's pool (so no held-out phrasing's 4-gram can appear; tested).
PREAMBLES = ("Sure!", "Sure, here it is:", "Of course!", "Happy to help!", "Okay, here you go:")
SIGN_OFFS = ("Hope this helps!", "Hope that helps!", "Glad to help!", "Have a nice day!")
SENTENCES = ("The answer is {}.", "It is {}.", "That would be {}.")


def profile(scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Family -> kind -> the fraction of its demonstrations with that mistake, for every family and composition, at
    `scale` times the default rates: each capped at 1, and a family's kinds together at 1 (shrunk in proportion)."""
    rates = {name: {kind: PROFILE[name].get(kind, 0) / 100 for kind in KINDS} for name in FAMILY_TABLE}
    for name, family in COMPOSITION_TABLE.items():
        source, operation = (rates[part] for part in family.parts)
        rates[name] = {
            "miscount": 1 - (1 - source["miscount"]) * (1 - operation["miscount"]),
            "chatty": operation["chatty"],
            "format": operation["format"],
            "wrong_value": 1 - (1 - source["wrong_value"]) * (1 - operation["wrong_value"]),
        }
    scaled = {}
    for name, kinds in rates.items():
        kinds = {kind: min(1.0, rate * scale) for kind, rate in kinds.items()}
        total = sum(kinds.values())
        scaled[name] = {kind: rate / total for kind, rate in kinds.items()} if total > 1 else kinds
    return scaled


class Flaws:
    """Writes demonstrations the way the profile says people do: `flaws(family, task, messages)` returns the kind
    of mistake ("" for none) and the conversation with its last answer flawed. Its own seeded random stream, so the
    prompts and tasks of a split are the same at any scale."""

    def __init__(self, rng: random.Random, scale: float, pool: Pool):
        self.rng, self.rates, self.pool = rng, profile(scale), pool

    def __call__(self, family: Family, task: Task, messages: list[dict[str, str]]) -> tuple[str, list[dict]]:
        draw, kind = self.rng.random(), ""
        for name, rate in self.rates[family.name].items():
            if draw < rate:
                kind = name
                break
            draw -= rate
        if not kind:
            return "", messages
        reference = messages[-1]["content"]
        candidates = dict.fromkeys(self.mistakes(kind, family, task, reference))
        failing = [text for text in candidates if text != reference and not verify(task.check, text)]
        if not failing:
            return "", messages
        return kind, [*messages[:-1], {"role": "assistant", "content": self.rng.choice(failing)}]

    def mistakes(self, kind: str, family: Family, task: Task, reference: str) -> list[str]:
        """The answers a writer making mistakes of `kind` could give (some may pass the check: the caller drops
        those)."""
        if kind == "chatty":  # a preamble on a line of its own before a list; a full stop before a sign-off
            glue = "\n" if "\n" in reference else " "
            stop = "" if glue == "\n" or reference.endswith((".", "!", "?")) else "."
            opened = f"{self.rng.choice(PREAMBLES)}{glue}{reference}"
            closing = f"{stop}{glue}{self.rng.choice(SIGN_OFFS)}"
            return [opened, reference + closing, opened + closing]
        if kind == "format":
            return misshapen(task.check, reference)
        if len(family.parts) == 1:
            return step_mistakes(kind, task)
        source, operation = family.parts
        build = WORD_OPERATIONS[operation][1]
        wrong_words = self.wrong_words(source, task) if PROFILE[source].get(kind) else []
        own = step_mistakes(kind, task) if PROFILE[operation].get(kind) else []
        return [build({}, word).answers[-1] for word in wrong_words] + own

    def wrong_words(self, source: str, task: Task) -> list[str]:
        """Words a composition's first step finds by mistake: a misremembered fact, an item next to the one asked
        for, another category."""
        check = task.check
        if source == "knowledge":
            return [self.pool.other_value(Fact(*check["facts"][0]), self.rng) for _ in range(3)]
        if source == "list_item":
            return neighbours(task)
        return [name for name, items in CATEGORIES.items() if check["word"] not in items]


def step_mistakes(kind: str, task: Task) -> list[str]:
    """A plain family's (or a composition's last step's) miscounts: a count off by one, a bullet too many or too
    few, an item next to the one asked for; or its wrong value: the task's plausible wrong answer."""
    check = task.check
    if kind == "miscount" and check["kind"] == "number":
        return [str(check["answer"] - 1), str(check["answer"] + 1)]
    if kind == "miscount" and check["kind"] == "list":
        items = list_items(task.answers[-1])[1]
        spare = [item for item in check["pool"] if item not in items]
        return [join_items(items[:-1], check["style"]), join_items([*items, *spare[:1]], check["style"])]
    if kind == "miscount" and "position" in task.slots:
        return neighbours(task)
    return [task.wrong]


def neighbours(task: Task) -> list[str]:
    """The items next to the one a list question asks for (its position miscounted by one)."""
    items, position = task.check["items"], task.slots["position"]
    index = len(items) - 1 if position == "last" else POSITIONS.index(position)
    return [items[i] for i in (index - 1, index + 1) if 0 <= i < len(items)]


def misshapen(check: dict, reference: str) -> Sequence[str]:
    """The right content in a shape the prompt did not ask for: a sentence for a bare answer, "Yes, it is." for
    "Yes", lower or title case for capitals, commas for bullets."""
    if check["kind"] == "yes_no":
        return ["Yes, it is." if check["answer"] == "yes" else "No, it is not."]
    if check["kind"] == "exact" and check.get("case"):
        return [reference.lower(), reference.capitalize()]
    shaped = ignore_format(check, reference)
    return [shaped] if shaped else [sentence.format(reference) for sentence in SENTENCES]


__all__ = ["KINDS", "PREAMBLES", "PROFILE", "SENTENCES", "SIGN_OFFS", "Flaws", "profile"]
