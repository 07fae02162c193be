"""Task families: instruction templates from a small grammar, plus a maker of verifiable instances.

A template is PREFIX + CORE + SUFFIX. Each family has training cores and held-out cores (distinct phrasings of its
instruction); the prefixes ("Hi! Quick question. ") and suffixes (" Be brief. Thanks.") are shared by all families
and built from parts, again split into training and held-out ones. Training data is drawn from training cores x
training wrappers (thousands of templates per family: instruction diversity is what makes a small model generalise
to new phrasings, Zhang, Wang & Charton 2024); held_out_paraphrases from held-out cores x held-out wrappers, which
the training grammar cannot produce (tested).

A family's maker draws a `Task` (template slots, reference answers, a check, a plausible wrong answer) from what a
`Pool` allows. Compositions chain two families (find a word: a world fact, a list item, a category; then transform
it: capitals, first letter, letter count). They form a grid split like a Latin square: SFT trains some pairs, and
held_out_compositions asks for the others, whose parts SFT only ever combines with other partners. Families and
compositions share the task builders below, so a composition checks its answer exactly as its parts do.

Slots are written without quotes ("Write pear in capital letters."): byte-level BPE gives a word glued to a quote
another token than the same word after a space, and a model would have to learn every word twice to copy it.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .world import CATEGORIES, MONTHS, OPERATIONS, PRODUCTS, WORDS, Fact, Pool, arithmetic_problem


def wrappers(firsts: tuple[str, ...], seconds: tuple[str, ...], before: bool) -> tuple[str, ...]:
    """Every "first second" pair as a prefix (before the core) or a suffix (after it); "" parts drop out."""
    joined = (" ".join(part for part in (first, second) if part) for first in firsts for second in seconds)
    return tuple(f"{text} " if before and text else f" {text}" if text else "" for text in joined)


GREETINGS = ("", "Hi!", "Hello.", "Hey.", "Hi there.", "Good day.", "Greetings.")
CONTEXTS = (
    "",
    "Quick question.",
    "I need some help.",
    "Question:",
    "Help me out here.",
    "I am curious.",
    "This is for a quiz.",
    "My friend asked me this.",
    "Here is a task.",
    "Please help.",
)
REQUESTS = (
    "",
    "Be brief.",
    "Keep it short.",
    "Just the answer, please.",
    "Answer directly.",
    "No explanation needed.",
)
THANKS = ("", "Thanks.", "Thank you!", "Much appreciated.")
TRAINING_PREFIXES = wrappers(GREETINGS, CONTEXTS, before=True)
TRAINING_SUFFIXES = wrappers(REQUESTS, THANKS, before=False)
# Held out: every part new, so no training wrapper contains them.
HELD_OUT_PARTS = {
    "greetings": ("Good morning.", "Howdy."),
    "contexts": ("One more thing:", "I was wondering."),
    "requests": ("A short answer will do.", "Reply tersely."),
    "thanks": ("Cheers!", "Many thanks."),
}
HELD_OUT_PREFIXES = wrappers(HELD_OUT_PARTS["greetings"], HELD_OUT_PARTS["contexts"], before=True)
HELD_OUT_SUFFIXES = wrappers(HELD_OUT_PARTS["requests"], HELD_OUT_PARTS["thanks"], before=False)


@dataclass(frozen=True)
class Task:
    slots: dict[str, object]  # fill the templates
    answers: tuple[str, ...]  # one per assistant turn; the check is for the last
    check: dict
    wrong: str  # a plausible wrong last answer, for comparisons
    options: tuple[str, ...] = ()  # the options or list items the question lists, in order (for trivial-rule floors)


@dataclass(frozen=True)
class Template:
    """One production of the grammar: the turns of a conversation (the wrapper goes around the first) and its id."""

    name: str  # "family/core.prefix.suffix", indices into the family's cores and the wrapper lists
    turns: tuple[str, ...]


@dataclass(frozen=True)
class Grammar:
    """The cores and wrappers one split draws from."""

    cores: tuple[int, ...]  # indices into the family's cores (training ones first, then the held-out ones)
    prefixes: tuple[int, ...]  # indices into PREFIXES
    suffixes: tuple[int, ...]  # indices into SUFFIXES


def split_wrappers(wrappers: tuple[str, ...], first: str, second: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(indices of the wrappers with neither part, indices of those with both): a development split of wrappers."""
    return (
        tuple(i for i, text in enumerate(wrappers) if first not in text and second not in text),
        tuple(i for i, text in enumerate(wrappers) if first in text and second in text),
    )


PREFIXES = TRAINING_PREFIXES + HELD_OUT_PREFIXES
SUFFIXES = TRAINING_SUFFIXES + HELD_OUT_SUFFIXES


@dataclass(frozen=True)
class Family:
    name: str
    cores: tuple[tuple[str, ...], ...]  # each: one user turn per answer
    roles: tuple[str, ...]  # per core: "train", "dev" (trained, but held out in development) or "held_out"
    make: Callable[[random.Random, Pool], Task]
    parts: tuple[str, ...]  # the families it combines (itself, for a plain family)

    def grammar(self, held_out: bool, development: bool = False) -> Grammar:
        """Training or held-out cores and wrappers. In development the reported held-out ones are left out and
        stand-in training cores and wrapper parts take their place, so tuning never sees the reported templates."""
        if development:
            chosen = ("dev",) if held_out else ("train",)
            prefixes = split_wrappers(TRAINING_PREFIXES, GREETINGS[-1], CONTEXTS[-1])[held_out]
            suffixes = split_wrappers(TRAINING_SUFFIXES, REQUESTS[-1], THANKS[-1])[held_out]
        elif held_out:
            chosen = ("held_out",)
            prefixes = tuple(range(len(TRAINING_PREFIXES), len(PREFIXES)))
            suffixes = tuple(range(len(TRAINING_SUFFIXES), len(SUFFIXES)))
        else:
            chosen = ("train", "dev")
            prefixes, suffixes = tuple(range(len(TRAINING_PREFIXES))), tuple(range(len(TRAINING_SUFFIXES)))
        return Grammar(tuple(i for i, role in enumerate(self.roles) if role in chosen), prefixes, suffixes)

    def template(self, core: int, prefix: int, suffix: int) -> Template:
        first, *rest = self.cores[core]
        return Template(f"{self.name}/{core}.{prefix}.{suffix}", (PREFIXES[prefix] + first + SUFFIXES[suffix], *rest))

    def draw(self, rng: random.Random, grammar: Grammar, core: int | None = None) -> Template:
        """A template of the grammar: the given core (else a random one) in a random wrapper."""
        core = rng.choice(grammar.cores) if core is None else core
        return self.template(core, rng.choice(grammar.prefixes), rng.choice(grammar.suffixes))

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


# Requests that fit any family's ask (a noun phrase: "the first letter of {word}", "{word} in capital letters").
# They carry no hint of the task, so a model must read what is asked for, not recognise a memorised sentence. The
# last two training frames stand in for the two held-out ones in development.
TRAINING_FRAMES = (
    "What is {ask}?",
    "Tell me {ask}.",
    "Give me {ask}.",
    "I need {ask}.",
    "Please write {ask}.",
    "Can you tell me {ask}?",
    "Reply with {ask}.",
    "Write {ask}.",
    "Show me {ask}.",
    "Find {ask}.",
)
HELD_OUT_FRAMES = ("I'd like to know {ask}.", "Could you give me {ask}?")
DEVELOPMENT_FRAMES = TRAINING_FRAMES[-len(HELD_OUT_FRAMES) :]


def family(name: str, *cores: str | tuple[str, ...], held_out: int = 2, table: dict = FAMILY_TABLE):
    """Registers the decorated maker as a family with its own cores: the last `held_out` are held out, and as many
    before them stand in for them in development."""

    def register(make: Callable[[random.Random, Pool], Task]) -> Callable[[random.Random, Pool], Task]:
        turns = tuple(c if isinstance(c, tuple) else (c,) for c in cores)
        trained = len(turns) - held_out
        roles = tuple(
            "held_out" if i >= trained else "dev" if i >= trained - held_out else "train" for i in range(len(turns))
        )
        table[name] = Family(name, turns, roles, make, tuple(name.split("+")))
        return make

    return register


def asking(name: str, *asks: str, table: dict = FAMILY_TABLE):
    """Registers the decorated maker as a family whose cores are every frame around every one of its asks;
    compositions ("knowledge+uppercase", named after their parts) are built the same way."""

    def register(make: Callable[[random.Random, Pool], Task]) -> Callable[[random.Random, Pool], Task]:
        frames = [*TRAINING_FRAMES, *HELD_OUT_FRAMES]
        cores = tuple((frame.format(ask=ask),) for frame in frames for ask in asks)
        roles = tuple(
            "held_out" if frame in HELD_OUT_FRAMES else "dev" if frame in DEVELOPMENT_FRAMES else "train"
            for frame in frames
            for _ in asks
        )
        table[name] = Family(name, cores, roles, make, tuple(name.split("+")))
        return make

    return register


# ---------------------------------------------------------------- tasks: answers and their checks


def one_turn_task(slots: dict, text: str, wrong: object, check: dict, facts: Sequence[Fact] = ()) -> Task:
    """A one-turn task; `facts` (the world facts the answer rests on) are recorded in the check."""
    if facts:
        check = {**check, "facts": [fact.triple for fact in facts]}
    return Task(slots, (text,), check, str(wrong))


def number_task(slots: dict, value: int, wrong: object, facts: Sequence[Fact] = ()) -> Task:
    """A task whose answer is the number `value` alone."""
    return one_turn_task(slots, str(value), wrong, {"kind": "number", "answer": value}, facts)


def exact_task(slots: dict, text: str, wrong: str, facts: Sequence[Fact] = (), case: bool = False) -> Task:
    """A task whose answer is `text` alone (its case counts only with `case`)."""
    check = {"kind": "exact", "answer": text, **({"case": True} if case else {})}
    return one_turn_task(slots, text, wrong, check, facts)


def fact_task(slots: dict, fact: Fact, wrong: str, facts: Sequence[Fact]) -> Task:
    """A task whose answer is the value of a world fact: a number task or an exact one."""
    if fact.numeric:
        return number_task(slots, int(fact.value), wrong, facts)
    return exact_task(slots, fact.value, wrong, facts)


def join_items(items: list[str], style: str) -> str:
    return "\n".join(f"- {item}" for item in items) if style == "bullet" else commas(items)


def uppercase_task(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    """A task whose answer is `word` in capital letters (case counts)."""
    return exact_task(slots, word.upper(), word.capitalize(), facts, case=True)


def first_letter_task(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    """A task whose answer is the first letter of `word`."""
    return exact_task(slots, word[0].lower(), word[-1].lower(), facts)


def letter_count_task(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    """A task whose answer is the number of letters in `word`."""
    return number_task(slots, len(word), len(word) + 1, facts)


def commas(items: list) -> str:
    return ", ".join(map(str, items))


def word_list(rng: random.Random) -> tuple[list[str], str]:
    """3 to 6 distinct suite words, and which end of the list a question asks for."""
    return rng.sample(WORDS, rng.randint(3, 6)), rng.choice(("first", "last"))


def list_end(items: list[str], end: str) -> tuple[str, str]:
    """(the item at that end, the one at the other end)."""
    return (items[0], items[-1]) if end == "first" else (items[-1], items[0])


def word_facts(pool: Pool) -> list[Fact]:
    """Facts whose value is one of the suite's words, for string tasks on facts."""
    return [fact for fact in pool.facts if fact.value in WORDS]


# ---------------------------------------------------------------- families on the world's facts


@asking(
    "knowledge",
    "{about}",
)
def knowledge(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.facts)
    return fact_task({"about": fact.about}, fact, pool.other_value(fact, rng), [fact])


@family(
    "yes_no",
    "Is it true that {statement}? Answer yes or no.",
    "True or false (answer yes or no): {statement}.",
    "Answer yes or no: is it the case that {statement}?",
    "Yes or no: {statement}?",
    "Here is a claim: {statement}. Is it correct? Reply yes or no.",
    "Tell me yes or no. Is it so that {statement}?",
    "Would you say that {statement}? Yes or no.",
    "Reply with yes or no only. Claim: {statement}.",
    # held out
    "Check this for me, yes or no: {statement}.",
    "Someone told me that {statement}. Are they right? Just say yes or no.",
)
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
    return replace(fact_task({"about": fact.about, "a": a, "b": b}, fact, wrong, [fact]), options=(a, b))


@family(
    "multi_turn",
    ("What is {about}?", "And what is the {attribute} of {that}?"),
    ("Tell me {about}.", "Thanks. What is the {attribute} of {that}?"),
    ("Do you know {about}?", "Great, now tell me the {attribute} of {that}."),
    ("I need {about}.", "What about the {attribute} of {that}?"),
    ("Quick question: what is {about}?", "Follow-up: the {attribute} of {that}?"),
    ("Can you tell me {about}?", "OK. And the {attribute} of {that}?"),
    ("Please state {about}.", "Then what is the {attribute} of {that}?"),
    ("What is {about}? Just the name.", "Now give me the {attribute} of {that}."),
    # held out
    ("Remind me: what is {about}?", "Good. Do you also know the {attribute} of {that}?"),
    ("Who or what is {about}?", "Right. And what is the {attribute} of {that}?"),
)
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
        {"expr": f"{a} {rng.choice(OPERATIONS[op])} {b}"}, result, result + rng.choice((-2, -1, 1, 2, 10))
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
    return replace(number_task({"a": a, "b": b, "which": which}, best, a + b - best), options=(str(a), str(b)))


@asking(
    "min_max",
    "the {which} number in the list {items}",
    "the {which} of the numbers {items}",
    "the {which} value among {items}",
)
def min_max(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(range(1, 100), rng.randint(3, 5))
    which = rng.choice(("largest", "smallest"))
    best, worst = (max(items), min(items)) if which == "largest" else (min(items), max(items))
    return replace(number_task({"items": commas(items), "which": which}, best, worst), options=tuple(map(str, items)))


# ---------------------------------------------------------------- words and letters


@asking(
    "count_letters",
    "the number of letters in {word}",
    "the letter count of {word}",
    "the length of {word} in letters",
)
def count_letters(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return letter_count_task({"word": word}, word)


@asking(
    "uppercase",
    "{word} in capital letters",
    "{word} in uppercase",
    "{word} in all caps",
    "the word {word} in block capitals",
)
def uppercase(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return uppercase_task({"word": word}, word)


@asking(
    "first_letter",
    "the first letter of {word}",
    "the initial letter of {word}",
    "the letter that {word} starts with",
)
def first_letter(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return first_letter_task({"word": word}, word)


# ---------------------------------------------------------------- lists


@asking(
    "list_item",
    "the {end} item of the list {items}",
    "the {end} word in the list {items}",
    "the {end} entry of {items}",
)
def list_item(rng: random.Random, pool: Pool) -> Task:
    items, end = word_list(rng)
    return replace(exact_task({"items": commas(items), "end": end}, *list_end(items, end)), options=tuple(items))


@asking(
    "count_items",
    "the number of items in the list {items}",
    "the count of items in {items}",
    "the length of the list {items}",
)
def count_items(rng: random.Random, pool: Pool) -> Task:
    count = rng.randint(2, 7)
    items = rng.sample(WORDS, count)
    return replace(number_task({"items": commas(items)}, count, count + rng.choice((-1, 1))), options=tuple(items))


@asking(
    "bullet_list",
    "a bullet list of {n} {things}",
    "{n} {things} as bullet points",
    "{n} {things}, one bullet per line",
)
def bullet_list(rng: random.Random, pool: Pool) -> Task:
    category = rng.choice(tuple(CATEGORIES))
    n = rng.randint(2, 4)
    items = rng.sample(CATEGORIES[category], n + 1)
    check = {"kind": "list", "style": "bullet", "count": n, "pool": list(CATEGORIES[category])}
    return one_turn_task(
        {"n": n, "things": f"{category}s"}, join_items(items[:n], "bullet"), join_items(items, "bullet"), check
    )


# ---------------------------------------------------------------- extraction and classification

SENTENCES = (
    "In {date}, {name} sold {number} {product} in {town}",
    "{name} paid {number} coins for {product} in {town} in {date}",
    "{number} people came to hear {name} sing in {town} in {date}",
    "In {town}, in {date}, {name} counted {number} boats on the river",
)
FIELDS = {"name": "the person's name", "number": "the quantity", "date": "the month", "town": "the town"}
ONE_WORD_OPTIONS = "fruit, animal, colour, tool or vehicle"
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
    return exact_task({"field": FIELDS[field], "sentence": sentence}, values[field], values[other])


@asking(
    "one_word",
    "the category of {item} in one word ({options})",
    "in one word, the kind of thing {item} is ({options})",
    "the kind of thing {item} is, in one word ({options})",
)
def one_word(rng: random.Random, pool: Pool) -> Task:
    category, wrong = rng.sample(tuple(CATEGORIES), 2)
    check = {"kind": "one_word", "answers": SPELLINGS.get(category, [category])}
    task = one_turn_task(
        {"item": rng.choice(CATEGORIES[category]), "options": ONE_WORD_OPTIONS}, category, wrong, check
    )
    return replace(task, options=tuple(CATEGORIES))  # the order ONE_WORD_OPTIONS lists them in


# ---------------------------------------------------------------- compositions
# A grid: a source finds a word (a world fact, an item of a list, the category of a thing), then an operation
# transforms it (capital letters, first letter, letter count). The grid is split like a Latin square, so that every
# held-out pair's source and operation are each trained in two other pairs: held_out_compositions asks for pairs
# that no training conversation combines, the way compositional splits such as SCAN's and COGS's do. Development
# swaps the roles of the "held_out" and "dev" pairs: it trains as many pairs as the real run and never scores the
# reported ones.


def fact_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], tuple[str, ...]]:
    """A world fact whose value is a suite word: (slots, the word, the facts it rests on, the options listed)."""
    fact = rng.choice(word_facts(pool))
    return {"about": fact.about}, fact.value, [fact], ()


def list_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], tuple[str, ...]]:
    """The first or last item of a list of suite words."""
    items, end = word_list(rng)
    return {"items": commas(items), "end": end}, list_end(items, end)[0], [], tuple(items)


def category_word(rng: random.Random, pool: Pool) -> tuple[dict, str, list[Fact], tuple[str, ...]]:
    """The category of a thing ("peach" -> "fruit"), never named in the question."""
    category = rng.choice(tuple(CATEGORIES))
    return {"item": rng.choice(CATEGORIES[category])}, category, [], ()


SOURCES = {  # name: (noun phrases that ask for the word, the maker of slots, word, facts and listed options)
    "knowledge": (("{about}",), fact_word),
    "list_item": (("the {end} item of the list {items}", "the {end} word in the list {items}"), list_word),
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
        slots, word, facts, options = find(rng, pool)
        return replace(build(slots, word, facts), options=options)

    return make


for name in COMPOSITION_ROLES:
    source, operation = name.split("+")
    asks = [ask.format(word=phrase) for ask in WORD_OPERATIONS[operation][0] for phrase in SOURCES[source][0]]
    asking(name, *asks, table=COMPOSITION_TABLE)(composition(source, operation))
