"""Comparisons: the reference answer against one that breaks exactly one thing, the way real models fail.

The rejected answer is wrong in value, answers another question (a letter where a count is asked: the short,
well-formed answer a policy drifts to when nothing tells a reward model it is off the task), ignores the requested
format, rambles before answering, refuses, or repeats the question; which one is recorded, so a reward model's
accuracy can be read per kind of failure.
"""

import random

from .tasks import Task, join_items
from .verifiers import list_items, verify

OPENERS = (
    "Great question! There are a few things to keep in mind here, so let me think it through carefully before I "
    "answer.",
    "Sure, I would be happy to help with that. Questions like this come up a lot, and it is worth going step by step.",
    "Let me see. At first this looks simple, but it is always good to double-check the details. Here is what I found:",
    "Thank you for asking! I have considered the question from several angles, and I am fairly confident about this "
    "one.",
)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I am not able to answer that question.",
    "As an AI model, I cannot do this task.",
    "Sorry, I don't know.",
)
# how often each failure is drawn
WEIGHTS = {"wrong_value": 3, "off_task": 2, "format": 2, "verbose": 1, "refusal": 1, "repeat": 1}


def reject(rng: random.Random, task: Task, messages: list[dict[str, str]], off_task: str) -> tuple[str, str]:
    """(what is broken, the rejected answer) for a rendered task; only candidates that fail its check are drawn.
    `off_task` is the reference answer of another family's task."""
    reference = task.answers[-1]
    candidates = {
        "wrong_value": task.wrong,
        "off_task": off_task,
        "format": ignore_format(task.check, reference),
        "verbose": f"{rng.choice(OPENERS)}\n\n{reference}",
        "refusal": rng.choice(REFUSALS),
        "repeat": messages[-2]["content"],
    }
    broken = [name for name, text in candidates.items() if text is not None and not verify(task.check, text)]
    name = rng.choices(broken, [WEIGHTS[name] for name in broken])[0]
    return name, candidates[name]


def ignore_format(check: dict, reference: str) -> str | None:
    """The reference's content in a shape the prompt did not ask for; None where the prompt asks for no shape."""
    kind = check["kind"]
    if kind == "json":
        prose = ", ".join(f"the {key} is {value}" for key, value in check["answer"].items())
        return f"{prose[0].upper()}{prose[1:]}."
    if kind == "list" and check["style"] != "any":
        return join_items(list_items(reference)[1], "comma" if check["style"] == "bullet" else "bullet")
    if kind == "one_word":
        return f"It is a kind of {reference}."
    if kind == "yes_no":
        return "True." if check["answer"] == "yes" else "False."
    if kind == "exact" and check.get("case"):
        return reference.lower()
    return None
