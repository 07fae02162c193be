"""Exact scoring of a response against a check spec: lenient about surface, strict about content and format.

Check kinds (extra fields, such as `facts`, the world facts a question rests on, are ignored):
- exact {answer, case=false}: the answer alone; case-insensitive unless `case`;
- number {answer}: the number alone ("42." passes for 42, "The answer is 42." fails);
- one_word {answers}: one of these single words alone (e.g. "colour" or "color");
- yes_no {answer: "yes" or "no"}: that word alone ("True." fails);
- json {answer}: a JSON object (a code fence around it is fine) with exactly these keys and values;
- list {style: "bullet", "comma" or "any", then items + ordered, or count + pool}: "- item" lines, or one
  comma-separated line, holding exactly `items` (in this order if `ordered`), or `count` distinct members of `pool`.

Harmless variation passes everywhere: surrounding whitespace and quotes, runs of spaces, a trailing period, and the
case of strings (unless `case`).
"""

import json
import re

BULLET = re.compile(r"^[-*\u2022]\s+")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def normalise(text: str, case: bool = False) -> str:
    text = " ".join(text.split()).rstrip(".!").strip("\"'` ").rstrip(".!").strip()
    return text if case else text.casefold()


def list_items(text: str) -> tuple[str, list[str]] | None:
    """("bullet", items) for lines that all start with a bullet, ("comma", items) for one line, else None."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    if all(BULLET.match(line) for line in lines):
        return "bullet", [normalise(BULLET.sub("", line)) for line in lines]
    if len(lines) == 1:
        return "comma", [normalise(item) for item in lines[0].split(",")]
    return None


def _exact(check: dict, response: str) -> bool:
    case = check.get("case", False)
    return normalise(response, case) == normalise(check["answer"], case)


def _number(check: dict, response: str) -> bool:
    text = normalise(response)
    return NUMBER.fullmatch(text) is not None and float(text) == check["answer"]


def _one_word(check: dict, response: str) -> bool:
    return normalise(response) in {normalise(word) for word in check["answers"]}


def _yes_no(check: dict, response: str) -> bool:
    return normalise(response) == check["answer"]


def json_object(response: str) -> dict | None:
    """The JSON object a response holds (a code fence around it is fine), else None."""
    text = response.strip()
    fenced = FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _json(check: dict, response: str) -> bool:
    value = json_object(response)
    expected = check["answer"]
    return (
        value is not None and value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in expected)
    )


def _same(value: object, expected: object) -> bool:
    if isinstance(expected, str):
        return isinstance(value, str) and normalise(value) == normalise(expected)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected


def _list(check: dict, response: str) -> bool:
    parsed = list_items(response)
    if parsed is None or check["style"] not in ("any", parsed[0]):
        return False
    items = parsed[1]
    if "items" in check:
        expected = [normalise(item) for item in check["items"]]
        return items == expected if check["ordered"] else sorted(items) == sorted(expected)
    pool = {normalise(item) for item in check["pool"]}
    return len(items) == len(set(items)) == check["count"] and set(items) <= pool


CHECKS = {"exact": _exact, "number": _number, "one_word": _one_word, "yes_no": _yes_no, "json": _json, "list": _list}


def verify(check: str | dict, response: str) -> bool:
    """Whether `response` passes `check` (a check object or its JSON string)."""
    check = json.loads(check) if isinstance(check, str) else check
    if check.get("kind") not in CHECKS:
        raise ValueError(f"unknown check kind {check.get('kind')!r}; expected one of {sorted(CHECKS)}")
    return CHECKS[check["kind"]](check, response)
