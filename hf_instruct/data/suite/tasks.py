"""Task families: instructions from a small grammar, plus a maker of verifiable instances.

A prompt is a family's ask ("the first letter of {word}") inside a request frame ("Could you tell me {ask}?"), the
first turn wrapped in up to four wrappers (greeting, context, request, closing): see `phrasings.py`, which splits
the frames and wrappers per suite seed into training, development and held-out ones. Training data is drawn from the
training phrasings (instruction diversity is what makes a small model generalise to new phrasings, Zhang, Wang &
Charton 2024); held_out_paraphrases from the held-out ones, which no training text contains (tested).

A family's maker draws a `Task` (template slots, reference answers, a check, a plausible wrong answer) from what a
`Pool` allows. Compositions chain two families (find a word: a world fact, a list item, a category; then transform
it: capitals, first letter, letter count). They form a grid split like a Latin square: SFT trains some pairs, and
held_out_compositions asks for the others, whose parts SFT only ever combines with other partners. Families and
compositions share the task builders below, so a composition checks its answer exactly as its parts do.

Some families have harder cases (longer words to count, longer lists, more items to write): the RL and comparison
prompts draw half of such a family's tasks from them (`Family.harder`), so that RL meets what SFT showed less of.

A check also records what the prompt shows that a trivial rule could answer from, besides the answer: `options`
(the values a prompt offers to choose from), `items` (a list the prompt shows), `word` (the word it names); the
verifier ignores them.

Slots are written without quotes ("Write pear in capital letters."): byte-level BPE gives a word glued to a quote
another token than the same word after a space, and a model would have to learn every word twice to copy it.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from .phrasings import POOL, Phrasings
from .world import CATEGORIES, MONTHS, OPERATIONS, PLURALS, PRODUCTS, WORDS, Fact, Pool, arithmetic_problem

WRAPPER_KINDS = ("greetings", "contexts", "requests", "closings")  # in the order they wrap the first turn


@dataclass(frozen=True)
class Task:
    slots: dict[str, object]  # fill the templates
    answers: tuple[str, ...]  # one per assistant turn; the check is for the last
    check: dict
    wrong: str  # a plausible wrong last answer, for comparisons


@dataclass(frozen=True)
class Template:
    """One production of the grammar: the turns of a conversation (the wrappers go around the first) and its id."""

    name: str  # "family/core:frames:wrappers", indices into the family's cores and the phrasing pool (-1: none)
    turns: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    name: str
    cores: tuple[tuple[str, ...], ...]  # each: the ask of every user turn, a noun phrase a request frame goes around
    kind: str  # the kind of phrasings that frame its asks: "frames", or "yes_no" for a statement to judge
    make: Callable[[random.Random, Pool], Task]
    parts: tuple[str, ...]  # the families it combines (itself, for a plain family)
    harder: Callable[[random.Random, Pool], Task] | None = None  # a maker of its harder cases, where it has them

    def draw(self, rng: random.Random, phrasings: Phrasings, role: str, core: int | None = None) -> Template:
        """A template in the seed's phrasings of `role`: the given core (else a random one), a frame around each
        turn's ask, and each wrapper either one of the role's or (at even odds) none."""
        core = rng.randrange(len(self.cores)) if core is None else core
        frames = [rng.choice(phrasings.roles[role][self.kind]) for _ in self.cores[core]]
        wrappers = [rng.choice(phrasings.roles[role][kind]) if rng.random() < 0.5 else "" for kind in WRAPPER_KINDS]
        turns = [frame.format(ask=ask) for frame, ask in zip(frames, self.cores[core], strict=True)]
        greeting, context, request, closing = wrappers
        turns[0] = " ".join(part for part in (greeting, context, turns[0], request, closing) if part)
        ids = [POOL[self.kind].index(frame) for frame in frames]
        ids += [POOL[kind].index(text) if text else -1 for kind, text in zip(WRAPPER_KINDS, wrappers, strict=True)]
        return Template(f"{self.name}/{core}:{'.'.join(map(str, ids))}", tuple(turns))

    def render(self, template: Template, task: Task) -> list[dict[str, str]]:
        """The conversation, up to and including the reference answer."""
        messages = []
        for turn, reply in zip(template.turns, task.answers, strict=True):
            messages += [
                {"role": "user", "content": turn.format(**task.slots)},
                {"role": "assistant", "content": reply},
            ]
        return messages


FAMILY_TABLE: dict[str, Family] = {}
COMPOSITION_TABLE: dict[str, Family] = {}
ENTITY_FAMILIES = ("knowledge", "yes_no", "choice")  # ask about one entity's facts: held_out_entities uses them


def asking(name: str, *asks: str | tuple[str, ...], kind: str = "frames", table: dict = FAMILY_TABLE):
    """Registers the decorated maker as a family whose cores are its asks (a tuple: one ask per turn), each asked in
    any request frame of `kind` the split allows ("Tell me {ask}.", "Could you give me {ask}?", ...). They carry no
    hint of the task, so a model must read what is asked for, not recognise a memorised sentence. Compositions
    ("knowledge+uppercase", named after their parts) are built the same way."""

    def register(make: Callable[[random.Random, Pool], Task]) -> Callable[[random.Random, Pool], Task]:
        cores = tuple(ask if isinstance(ask, tuple) else (ask,) for ask in asks)
        table[name] = Family(name, cores, kind, make, tuple(name.split("+")))
        return make

    return register


# ---------------------------------------------------------------- tasks: answers and their checks


def one_turn_task(
    slots: dict, text: str, wrong: object, check: dict, facts: Sequence[Fact] = (), shown: dict | None = None
) -> Task:
    """A one-turn task; `facts` (the world facts the answer rests on) and `shown` (what the prompt offers: options,
    items, a word) are recorded in the check."""
    if facts:
        check = {**check, "facts": [fact.triple for fact in facts]}
    return Task(slots, (text,), {**check, **(shown or {})}, str(wrong))


def number_task(slots: dict, value: int, wrong: object, facts: Sequence[Fact] = (), shown: dict | None = None) -> Task:
    """A task whose answer is the number `value` alone."""
    return one_turn_task(slots, str(value), wrong, {"kind": "number", "answer": value}, facts, shown)


def exact_task(
    slots: dict, text: str, wrong: str, facts: Sequence[Fact] = (), case: bool = False, shown: dict | None = None
) -> Task:
    """A task whose answer is `text` alone (its case counts only with `case`)."""
    check = {"kind": "exact", "answer": text, **({"case": True} if case else {})}
    return one_turn_task(slots, text, wrong, check, facts, shown)


def fact_task(slots: dict, fact: Fact, wrong: str, facts: Sequence[Fact], shown: dict | None = None) -> Task:
    """A task whose answer is the value of a world fact: a number task or an exact one."""
    if fact.numeric:
        return number_task(slots, int(fact.value), wrong, facts, shown)
    return exact_task(slots, fact.value, wrong, facts, shown=shown)


def join_items(items: list[str], style: str) -> str:
    return "\n".join(f"- {item}" for item in items) if style == "bullet" else commas(items)


def uppercase_task(slots: dict, word: str, facts: Sequence[Fact] = (), shown: dict | None = None) -> Task:
    """A task whose answer is `word` in capital letters (case counts)."""
    return exact_task(slots, word.upper(), word.capitalize(), facts, case=True, shown=shown)


def first_letter_task(slots: dict, word: str, facts: Sequence[Fact] = (), shown: dict | None = None) -> Task:
    """A task whose answer is the first letter of `word`."""
    return exact_task(slots, word[0].lower(), word[-1].lower(), facts, shown=shown)


def letter_count_task(slots: dict, word: str, facts: Sequence[Fact] = (), shown: dict | None = None) -> Task:
    """A task whose answer is the number of letters in `word`."""
    return number_task(slots, len(word), len(word) + 1, facts, shown)


def commas(items: list) -> str:
    return ", ".join(map(str, items))


POSITIONS = ("first", "second", "third", "fourth", "last")  # of a list item: five, so "the first item" scores 0.2
INITIALS = {letter: [word for word in WORDS if word[0] == letter] for letter in sorted({word[0] for word in WORDS})}
LENGTHS = {n: [c for c in CATEGORIES if len(c) == n] for n in sorted({len(c) for c in CATEGORIES})}


def word_list(rng: random.Random, sizes: tuple[int, int] = (5, 6)) -> tuple[list[str], str]:
    """5 or 6 (`sizes`) suite words with different first letters (so no other item's first letter answers for the
    asked one's; at least five, so the fourth is never the last), and which position of the list a question asks
    for."""
    letters = rng.sample(tuple(INITIALS), rng.randint(*sizes))
    return [rng.choice(INITIALS[letter]) for letter in letters], rng.choice(POSITIONS)


def list_at(items: list[str], position: str) -> tuple[str, str]:
    """(the item at that position, another item of the list)."""
    index = -1 if position == "last" else POSITIONS.index(position)
    return items[index], items[index - 1]


def word_facts(pool: Pool) -> list[Fact]:
    """Facts whose value is one of the suite's words, for string tasks on facts."""
    return [fact for fact in pool.facts if fact.value in WORDS]


# ---------------------------------------------------------------- families on the world's facts


@asking("knowledge", "{about}")
def knowledge(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.facts)
    return fact_task({"about": fact.about}, fact, pool.other_value(fact, rng), [fact])


@asking("yes_no", "{statement}", kind="yes_no")
def yes_no(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.facts)
    true = rng.random() < 0.5
    value = fact.value if true else pool.other_value(fact, rng)
    reply, wrong = ("yes", "no") if true else ("no", "yes")
    return one_turn_task(
        {"statement": f"{fact.about} is {value}"},
        reply.capitalize(),
        wrong.capitalize(),
        {"kind": "yes_no", "answer": reply},
        [fact],
        {"options": ["yes", "no"]},
    )


@asking(
    "choice",
    "{about}: {a} or {b}",
    "{about}, {a} or {b}",
    "{about} (either {a} or {b})",
)
def choice(rng: random.Random, pool: Pool) -> Task:
    """Knowledge with the answer among two options: whether the model knows the fact, not how it phrases it."""
    fact = rng.choice(pool.facts)
    wrong = pool.other_value(fact, rng)
    a, b = rng.sample([fact.value, wrong], 2)
    return fact_task({"about": fact.about, "a": a, "b": b}, fact, wrong, [fact], {"options": [a, b]})


@asking("multi_turn", ("{about}", "the {attribute} of {that}"))
def multi_turn(rng: random.Random, pool: Pool) -> Task:
    """Two hops: a fact naming an entity, then a follow-up about "that town" / "that person"."""
    link = rng.choice(pool.links)
    fact = rng.choice(pool.by_subject[link.value])
    slots = {"about": link.about, "that": f"that {link.attribute.domain}", "attribute": fact.attribute.noun}
    task = fact_task(slots, fact, pool.other_value(fact, rng), [link, fact])
    return replace(task, answers=(link.value, *task.answers))


# ---------------------------------------------------------------- arithmetic and numbers


@asking(
    "arithmetic",
    "{expr}",
    "the value of {expr}",
    "the result of {expr}",
)
def arithmetic(rng: random.Random, pool: Pool) -> Task:
    a, op, b, result = arithmetic_problem(rng)
    return number_task(
        {"expr": f"{a} {rng.choice(OPERATIONS[op])} {b}"},
        result,
        result + rng.choice((-2, -1, 1, 2, 10)),
        shown={"items": [a, b]},
    )


@asking(
    "compare_numbers",
    "the {which} of {a} and {b}",
    "the {which} number out of {a} and {b}",
    "the {which} number: {a} or {b}",
)
def compare_numbers(rng: random.Random, pool: Pool) -> Task:
    a, b = rng.sample(range(1, 100), 2)
    which = rng.choice(("larger", "smaller"))
    best = max(a, b) if which == "larger" else min(a, b)
    return number_task({"a": a, "b": b, "which": which}, best, a + b - best, shown={"options": [a, b]})


@asking(
    "min_max",
    "the {which} number in the list {items}",
    "the {which} of the numbers {items}",
    "the {which} value among {items}",
)
def min_max(rng: random.Random, pool: Pool, sizes: tuple[int, int] = (3, 5)) -> Task:
    items = rng.sample(range(1, 100), rng.randint(*sizes))
    which = rng.choice(("largest", "smallest"))
    best, worst = (max(items), min(items)) if which == "largest" else (min(items), max(items))
    return number_task({"items": commas(items), "which": which}, best, worst, shown={"items": items})


# ---------------------------------------------------------------- words and letters


@asking(
    "count_letters",
    "the number of letters in {word}",
    "the letter count of {word}",
    "the length of {word} in letters",
)
def count_letters(rng: random.Random, pool: Pool, words: Sequence[str] = WORDS) -> Task:
    word = rng.choice(words)
    return letter_count_task({"word": word}, word, shown={"word": word})


@asking(
    "uppercase",
    "{word} in capital letters",
    "{word} in uppercase",
    "{word} in all caps",
    "the word {word} in block capitals",
)
def uppercase(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return uppercase_task({"word": word}, word, shown={"word": word})


@asking(
    "first_letter",
    "the first letter of {word}",
    "the initial letter of {word}",
    "the letter that {word} starts with",
)
def first_letter(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return first_letter_task({"word": word}, word, shown={"word": word})


# ---------------------------------------------------------------- lists


@asking(
    "list_item",
    "the {position} item of the list {items}",
    "the {position} word in the list {items}",
    "the {position} entry of {items}",
)
def list_item(rng: random.Random, pool: Pool, sizes: tuple[int, int] = (5, 6)) -> Task:
    items, position = word_list(rng, sizes)
    return exact_task(
        {"items": commas(items), "position": position}, *list_at(items, position), shown={"items": items}
    )


@asking(
    "count_items",
    "the number of items in the list {items}",
    "the count of items in {items}",
    "the length of the list {items}",
)
def count_items(rng: random.Random, pool: Pool, sizes: tuple[int, int] = (2, 7)) -> Task:
    count = rng.randint(*sizes)
    items = rng.sample(WORDS, count)
    return number_task({"items": commas(items)}, count, count + rng.choice((-1, 1)), shown={"items": items})


@asking(
    "bullet_list",
    "a bullet list of {n} {things}",
    "{n} {things} as bullet points",
    "{n} {things}, one bullet per line",
)
def bullet_list(rng: random.Random, pool: Pool, sizes: tuple[int, int] = (2, 4)) -> Task:
    category = rng.choice(tuple(CATEGORIES))
    n = rng.randint(*sizes)
    items = rng.sample(CATEGORIES[category], n + 1)
    check = {"kind": "list", "style": "bullet", "count": n, "pool": list(CATEGORIES[category])}
    return one_turn_task(
        {"n": n, "things": PLURALS[category]}, join_items(items[:n], "bullet"), join_items(items, "bullet"), check
    )


# ---------------------------------------------------------------- extraction and classification

SENTENCES = (
    "In {date}, {name} sold {number} {product} in {town}",
    "{name} paid {number} coins for {product} in {town} in {date}",
    "{number} people came to hear {name} sing in {town} in {date}",
    "In {town}, in {date}, {name} counted {number} boats on the river",
)
FIELDS = {"name": "the person's name", "number": "the quantity", "date": "the month", "town": "the town"}
ONE_WORD_OPTIONS = 5  # categories a one_word question offers, the right one among them, in a random order
SPELLINGS = {"colour": ["colour", "color"]}  # accepted one-word answers besides the category itself


@asking(
    "extract",
    "{field} in this sentence: {sentence}",
    "{field} mentioned here: {sentence}",
    "{field} from the sentence {sentence}",
)
def extract(rng: random.Random, pool: Pool) -> Task:
    values = {
        "name": rng.choice(pool.names["person"]),
        "number": str(rng.randint(2, 99)),
        "date": rng.choice(MONTHS),
        "town": rng.choice(pool.names["town"]),
    }
    sentence = rng.choice(SENTENCES).format(product=rng.choice(PRODUCTS), **values)
    field, other = rng.sample(tuple(FIELDS), 2)
    shown = {"options": list(values.values())}
    return exact_task({"field": FIELDS[field], "sentence": sentence}, values[field], values[other], shown=shown)


@asking(
    "one_word",
    "the category of {item} in one word ({options})",
    "in one word, the kind of thing {item} is ({options})",
    "the kind of thing {item} is, in one word ({options})",
)
def one_word(rng: random.Random, pool: Pool) -> Task:
    options = rng.sample(tuple(CATEGORIES), ONE_WORD_OPTIONS)
    category, wrong = options[:2]
    rng.shuffle(options)
    item = rng.choice(CATEGORIES[category])
    check = {"kind": "one_word", "answers": SPELLINGS.get(category, [category])}
    slots = {"item": item, "options": f"{', '.join(options[:-1])} or {options[-1]}"}
    return one_turn_task(slots, category, wrong, check, shown={"options": options, "word": item})


# ---------------------------------------------------------------- harder cases, for the RL and comparison prompts
# Beyond what the demonstrations show: the longest suite words to count (7-10 letters; SFT's are mostly 4-6), lists
# of 6-8 numbers (3-5), 7-8 words (5-6), 8-10 items to count (2-7), 5-6 bullet points (2-4; every category has 8+).
HARDER = {
    "count_letters": partial(count_letters, words=[word for word in WORDS if len(word) >= 7]),
    "min_max": partial(min_max, sizes=(6, 8)),
    "list_item": partial(list_item, sizes=(7, 8)),
    "count_items": partial(count_items, sizes=(8, 10)),
    "bullet_list": partial(bullet_list, sizes=(5, 6)),
}
for name, make in HARDER.items():
    FAMILY_TABLE[name] = replace(FAMILY_TABLE[name], harder=make)


# ---------------------------------------------------------------- compositions
# A grid: a source finds a word (a world fact, an item of a list, the category of a thing), then an operation
# transforms it (capital letters, first letter, letter count). The grid is split like a Latin square, so that every
# held-out pair's source and operation are each trained in two other pairs: held_out_compositions asks for pairs
# that no training conversation combines, the way compositional splits such as SCAN's and COGS's do. Development
# swaps the roles of the "held_out" and "dev" pairs: it trains as many pairs as the real run and never scores the
# reported ones. Their answer spaces are wide, so that no trivial rule scores much: a list item at one of five
# positions (the items' first letters all differ), eleven categories whose names have 8 lengths, drawn length first.


def fact_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], dict]:
    """A world fact whose value is a suite word: (slots, the word, the facts it rests on, what the prompt shows)."""
    fact = rng.choice(word_facts(pool))
    return {"about": fact.about}, fact.value, [fact], {}


def list_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], dict]:
    """The item at some position of a list of suite words."""
    items, position = word_list(rng)
    return {"items": commas(items), "position": position}, list_at(items, position)[0], [], {"items": items}


def category_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], dict]:
    """The category of a thing ("peach" -> "fruit"), never named in the question; each length of category name
    equally likely, so that no constant letter count answers more than one in eight."""
    category = rng.choice(LENGTHS[rng.choice(tuple(LENGTHS))])
    item = rng.choice(CATEGORIES[category])
    return {"item": item}, category, [], {"word": item}


SOURCES = {  # name: (noun phrases that ask for the word, the maker of slots and word)
    "knowledge": (("{about}",), fact_word),
    "list_item": (("the {position} item of the list {items}", "the {position} word in the list {items}"), list_word),
    "one_word": (("the kind of thing {item} is", "the category of {item}"), category_word),
}
WORD_OPERATIONS = {  # name: (asks around a noun phrase, the task builder)
    "uppercase": (("{word} in capital letters", "{word} in all caps"), uppercase_task),
    "first_letter": (("the first letter of {word}", "the letter that {word} starts with"), first_letter_task),
    "count_letters": (("the number of letters in {word}", "the letter count of {word}"), letter_count_task),
}
COMPOSITION_ROLES = {  # "train", "held_out" (trained in development) or "dev" (held out in development, else trained)
    "knowledge+uppercase": "held_out",
    "list_item+first_letter": "held_out",
    "one_word+count_letters": "held_out",
    "knowledge+first_letter": "dev",
    "list_item+count_letters": "dev",
    "one_word+uppercase": "dev",
    "knowledge+count_letters": "train",
    "list_item+uppercase": "train",
    "one_word+first_letter": "train",
}


def composition(source: str, operation: str) -> Callable[[random.Random, Pool], Task]:
    """The maker of source+operation tasks: find the word, then answer as the operation's family does."""
    find, build = SOURCES[source][1], WORD_OPERATIONS[operation][1]

    def make(rng: random.Random, pool: Pool) -> Task:
        slots, word, facts, shown = find(rng, pool)
        return build(slots, word, facts, shown)

    return make


for name in COMPOSITION_ROLES:
    source, operation = name.split("+")
    asks = [ask.format(word=phrase) for ask in WORD_OPERATIONS[operation][0] for phrase in SOURCES[source][0]]
    asking(name, *asks, table=COMPOSITION_TABLE)(composition(source, operation))
