"""Task families: paraphrased instruction templates plus a maker of verifiable instances.

A family's maker draws a `Task` (template slots, reference answers, a check, a plausible wrong answer) from what a
`Pool` allows; a template phrases it. Every family has ten templates: the suite keeps the last few for
held_out_paraphrases only. Compositions are families made of two others (a world fact, then formatting or string
work) that no SFT family combines that way; they only appear in held_out_compositions. Families and compositions
share the helpers below, so a composition checks its answer exactly as its parts do.
"""

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .world import CATEGORIES, FOODS, MONTHS, OPERATIONS, PRODUCTS, WORDS, Fact, Pool, arithmetic_problem


@dataclass(frozen=True)
class Task:
    slots: dict[str, object]  # fill the templates
    answers: tuple[str, ...]  # one per assistant turn; the check is for the last
    check: dict
    wrong: str  # a plausible wrong last answer, for comparisons


@dataclass(frozen=True)
class Family:
    name: str
    templates: tuple[tuple[str, ...], ...]  # each: one user turn per answer
    make: Callable[[random.Random, Pool], Task]
    parts: tuple[str, ...]  # the families it combines (itself, for a plain family)

    def render(self, template: int, task: Task) -> list[dict[str, str]]:
        """The conversation, up to and including the reference answer."""
        messages = []
        for turn, reply in zip(self.templates[template], task.answers, strict=True):
            messages += [
                {"role": "user", "content": turn.format(**task.slots)},
                {"role": "assistant", "content": reply},
            ]
        return messages


FAMILY_TABLE: dict[str, Family] = {}
COMPOSITION_TABLE: dict[str, Family] = {}
ENTITY_FAMILIES = ("knowledge", "yes_no", "multi_step")  # ask about one entity's facts: held_out_entities uses them


def family(name: str, *templates: str | tuple[str, ...], parts: tuple[str, ...] = (), table: dict = FAMILY_TABLE):
    """Registers the decorated maker as a family; a composition is named after its parts ("knowledge+json")."""

    def register(make: Callable[[random.Random, Pool], Task]) -> Callable[[random.Random, Pool], Task]:
        turns = tuple(t if isinstance(t, tuple) else (t,) for t in templates)
        table[name] = Family(name, turns, make, parts or tuple(name.split("+")))
        return make

    return register


def composition(name: str, *templates: str):
    return family(name, *templates, table=COMPOSITION_TABLE)


# ---------------------------------------------------------------- answers and their checks


def answer(slots: dict, text: str, wrong: object, check: dict, facts: Sequence[Fact] = ()) -> Task:
    """A one-turn task; `facts` (the world facts the answer rests on) are recorded in the check."""
    if facts:
        check = {**check, "facts": [fact.triple for fact in facts]}
    return Task(slots, (text,), check, str(wrong))


def number(slots: dict, value: int, wrong: object, facts: Sequence[Fact] = ()) -> Task:
    return answer(slots, str(value), wrong, {"kind": "number", "answer": value}, facts)


def exact(slots: dict, text: str, wrong: str, facts: Sequence[Fact] = (), case: bool = False) -> Task:
    return answer(slots, text, wrong, {"kind": "exact", "answer": text, **({"case": True} if case else {})}, facts)


def fact_answer(slots: dict, fact: Fact, wrong: str, facts: Sequence[Fact]) -> Task:
    return number(slots, int(fact.value), wrong, facts) if fact.numeric else exact(slots, fact.value, wrong, facts)


def join_items(items: list[str], style: str) -> str:
    return "\n".join(f"- {item}" for item in items) if style == "bullet" else commas(items)


def listing(slots: dict, items: list[str], wrong: list[str], style: str, ordered: bool = True) -> Task:
    """A list answer: bullets for style "bullet", else one comma-separated line ("any" accepts either back)."""
    check = {"kind": "list", "style": style, "items": items, "ordered": ordered}
    return answer(slots, join_items(items, style), join_items(wrong, style), check)


def json_object(slots: dict, value: dict, wrong: dict, facts: Sequence[Fact] = ()) -> Task:
    return answer(slots, json.dumps(value), json.dumps(wrong), {"kind": "json", "answer": value}, facts)


def upper(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    return exact(slots, word.upper(), word.capitalize(), facts, case=True)


def backwards(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    return exact(slots, word.lower()[::-1], word.lower(), facts)


def initial(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    return exact(slots, word[0].lower(), word[-1].lower(), facts)


def letter_count(slots: dict, word: str, facts: Sequence[Fact] = ()) -> Task:
    return number(slots, len(word), len(word) + 1, facts)


def record(rng: random.Random, pool: Pool, slots: dict, subject: str, facts: Sequence[Fact]) -> Task:
    """A JSON object with the subject's name and the given facts; the wrong one gets one value wrong."""
    value = {"name": subject, **{f.key: int(f.value) if f.numeric else f.value for f in facts}}
    broken = rng.choice(facts)
    wrong_value = pool.other_value(broken, rng)
    wrong = {**value, broken.key: int(wrong_value) if broken.numeric else wrong_value}
    keys = [f'"{key}"' for key in value]
    return json_object({**slots, "keys": ", ".join(keys[:-1]) + " and " + keys[-1]}, value, wrong, facts)


def some_facts(rng: random.Random, pool: Pool) -> tuple[str, list[Fact]]:
    subject = rng.choice([s for s, facts in pool.by_subject.items() if len(facts) >= 2])
    return subject, rng.sample(pool.by_subject[subject], 2)


def commas(items: list) -> str:
    return ", ".join(map(str, items))


# ---------------------------------------------------------------- families on the world's facts


@family(
    "knowledge",
    "What is {about}?",
    "Tell me {about}.",
    "Do you know {about}? Reply briefly.",
    "Quick question: what is {about}?",
    "I'd like to know {about}.",
    "Please state {about}.",
    "Can you tell me {about}?",
    "Answer with just the answer: what is {about}?",
    "Remind me: what is {about}?",
    "What would you say {about} is?",
)
def knowledge(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.facts)
    return fact_answer({"about": fact.about}, fact, pool.other_value(fact, rng), [fact])


@family(
    "yes_no",
    "Is it true that {statement}? Answer yes or no.",
    "True or false (answer yes or no): {statement}.",
    "Answer yes or no: is it the case that {statement}?",
    "Yes or no: {statement}?",
    "Here is a claim: {statement}. Is it correct? Reply yes or no.",
    "Tell me yes or no. Is it so that {statement}?",
    "Check this for me, yes or no: {statement}.",
    "Would you say that {statement}? Yes or no.",
    "Someone told me that {statement}. Are they right? Just say yes or no.",
    "Reply with yes or no only. Claim: {statement}.",
)
def yes_no(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.facts)
    true = rng.random() < 0.5
    value = fact.value if true else pool.other_value(fact, rng)
    reply, wrong = ("yes", "no") if true else ("no", "yes")
    return answer(
        {"statement": f"{fact.about} is {value}"},
        reply.capitalize(),
        wrong.capitalize(),
        {"kind": "yes_no", "answer": reply},
        [fact],
    )


@family(
    "multi_step",
    "What is {about} plus {n}?",
    "Add {n} to {about}. What number do you get?",
    "Take {about} and add {n} to it.",
    "If you add {n} to {about}, what do you get?",
    "Compute {about} + {n}.",
    "What do you get when {n} is added to {about}?",
    "Tell me {about} increased by {n}.",
    "Give me the sum of {about} and {n}.",
    "Start from {about}, then add {n}. What is the result?",
    "Work out {n} more than {about}.",
    parts=("knowledge", "arithmetic"),
)
def multi_step(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.numeric)
    n = rng.randint(1, 20)
    return number({"about": fact.about, "n": n}, int(fact.value) + n, fact.value, [fact])


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
    ("Remind me: what is {about}?", "Good. Do you also know the {attribute} of {that}?"),
    ("Who or what is {about}?", "Right. And what is the {attribute} of {that}?"),
    parts=("knowledge", "knowledge"),
)
def multi_turn(rng: random.Random, pool: Pool) -> Task:
    """Two hops: a fact naming an entity, then a follow-up about "that town" / "that person"."""
    link = rng.choice(pool.links)
    fact = rng.choice(pool.by_subject[link.value])
    slots = {"about": link.about, "that": f"that {link.attribute.domain}", "attribute": fact.attribute.noun}
    task = fact_answer(slots, fact, pool.other_value(fact, rng), [link, fact])
    return replace(task, answers=(link.value, *task.answers))


# ---------------------------------------------------------------- arithmetic and numbers


@family(
    "arithmetic",
    "What is {expr}?",
    "Compute {expr}.",
    "Calculate {expr} and give only the result.",
    "{expr} = ?",
    "Work out {expr}.",
    "What do you get for {expr}?",
    "Please evaluate {expr}.",
    "Solve: {expr}",
    "I need the value of {expr}.",
    "Find {expr}.",
)
def arithmetic(rng: random.Random, pool: Pool) -> Task:
    a, op, b, result = arithmetic_problem(rng)
    return number({"expr": f"{a} {rng.choice(OPERATIONS[op])} {b}"}, result, result + rng.choice((-2, -1, 1, 2, 10)))


@family(
    "compare_numbers",
    "Which is {which}, {a} or {b}?",
    "Of {a} and {b}, which number is {which}?",
    "Tell me the {which} of these two numbers: {a} and {b}.",
    "Compare {a} and {b}. Which one is {which}?",
    "{a} or {b}: which is {which}?",
    "Between {a} and {b}, give the {which} number.",
    "Pick the {which} number: {a}, {b}.",
    "Which number is {which}: {a} or {b}?",
    "Here are two numbers, {a} and {b}. Reply with the {which} one.",
    "Look at {a} and {b} and say which is {which}.",
)
def compare_numbers(rng: random.Random, pool: Pool) -> Task:
    a, b = rng.sample(range(1, 1000), 2)
    which = rng.choice(("larger", "smaller"))
    best = max(a, b) if which == "larger" else min(a, b)
    return number({"a": a, "b": b, "which": which}, best, a + b - best)


@family(
    "min_max",
    "What is the {which} number in this list: {items}?",
    "Find the {which} number among {items}.",
    "Which of these numbers is the {which}: {items}?",
    "Give me the {which} value in {items}.",
    "From {items}, pick the {which} number.",
    "Here is a list: {items}. What is its {which} number?",
    "Tell me the {which} of these numbers: {items}.",
    "Which number is the {which} in {items}?",
    "Look through {items} and report the {which} number.",
    "Out of {items}, which is the {which}?",
)
def min_max(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(range(1, 100), rng.randint(4, 7))
    which = rng.choice(("largest", "smallest"))
    best, worst = (max(items), min(items)) if which == "largest" else (min(items), max(items))
    return number({"items": commas(items), "which": which}, best, worst)


# ---------------------------------------------------------------- words and letters


@family(
    "count_words",
    'How many words are in "{text}"?',
    "Count the words in this text: {text}",
    'How many words does this phrase have? "{text}"',
    "Give the number of words in: {text}",
    'Tell me how many words there are in "{text}".',
    'Word count of "{text}"?',
    'Count how many words appear here: "{text}"',
    'What is the number of words in the phrase "{text}"?',
    'I wrote "{text}". How many words is that?',
    "Here is a phrase: {text}. How many words does it contain?",
)
def count_words(rng: random.Random, pool: Pool) -> Task:
    count = rng.randint(3, 9)
    return number({"text": " ".join(rng.sample(WORDS, count))}, count, count + rng.choice((-1, 1)))


@family(
    "count_letters",
    'How many letters are in the word "{word}"?',
    'Count the letters in "{word}".',
    'How long is the word "{word}", in letters?',
    'How many letters does "{word}" have?',
    "Give the number of letters in {word}.",
    'What is the letter count of "{word}"?',
    'Tell me how many letters "{word}" has.',
    'Count the characters in the word "{word}".',
    'The word is "{word}". How many letters?',
    'Spell out "{word}" in your head and tell me how many letters it has.',
)
def count_letters(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return letter_count({"word": word}, word)


@family(
    "reverse_word",
    'Reverse the word "{word}".',
    'Spell "{word}" backwards.',
    'Write "{word}" in reverse order.',
    'What is "{word}" spelled backwards?',
    "Reverse the letters of {word}.",
    'Give me the word "{word}" written back to front.',
    'Turn "{word}" around, letter by letter.',
    'Write the letters of "{word}" from last to first.',
    'Flip "{word}" so it reads backwards.',
    'What do you get if you read "{word}" from right to left?',
)
def reverse_word(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return backwards({"word": word}, word)


@family(
    "uppercase",
    'Write "{word}" in capital letters.',
    'Convert "{word}" to uppercase.',
    "Give me {word} in all caps.",
    "Uppercase this word: {word}",
    'Rewrite "{word}" using only capital letters.',
    'What is "{word}" in upper case?',
    'Make "{word}" uppercase.',
    'Put "{word}" in block capitals.',
    'Shout the word "{word}" (all capitals).',
    'Change every letter of "{word}" to a capital.',
)
def uppercase(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return upper({"word": word}, word)


@family(
    "first_letter",
    'What is the first letter of "{word}"?',
    'Which letter does "{word}" start with?',
    "Give the first letter of the word {word}.",
    'Tell me the initial letter of "{word}".',
    '"{word}" begins with which letter?',
    'What letter comes first in "{word}"?',
    'Name the first letter of "{word}".',
    'Write only the first letter of "{word}".',
    'Look at "{word}". What is its opening letter?',
    'The word "{word}" starts with what letter?',
)
def first_letter(rng: random.Random, pool: Pool) -> Task:
    word = rng.choice(WORDS)
    return initial({"word": word}, word)


# ---------------------------------------------------------------- lists


@family(
    "sort_list",
    "Sort these words alphabetically: {items}",
    "Put these words in alphabetical order: {items}",
    "Arrange in A to Z order: {items}",
    "Alphabetise this list: {items}",
    "Sort the following list from A to Z: {items}",
    "Order these words alphabetically: {items}",
    "Can you sort {items} alphabetically?",
    "Give these words in dictionary order: {items}",
    "List {items} again, but sorted alphabetically.",
    "Reorder the words {items} so they are in alphabetical order.",
)
def sort_list(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(WORDS, rng.randint(3, 6))
    ordered = sorted(items)
    swap = rng.randrange(len(items) - 1)
    wrong = ordered[:swap] + [ordered[swap + 1], ordered[swap]] + ordered[swap + 2 :]
    return listing({"items": commas(items)}, ordered, wrong, style="any")


@family(
    "last_item",
    "What is the last item in this list: {items}?",
    "Give the final item of {items}.",
    "Which word comes last in this list: {items}?",
    "Tell me the last element of the list {items}.",
    "Here is a list: {items}. What is at the end?",
    "Name the last entry in: {items}",
    "What comes last: {items}?",
    "Return the final word of the list {items}.",
    "Read {items} and give me only the item at the end.",
    "In the list {items}, what is the very last item?",
)
def last_item(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(WORDS, rng.randint(3, 7))
    return exact({"items": commas(items)}, items[-1], items[0])


@family(
    "dedupe",
    "Remove the duplicates from this list: {items}",
    "Deduplicate: {items}",
    "Give this list with each word only once, keeping the order: {items}",
    "Drop repeated words from {items}, keeping the first of each.",
    "List the distinct words of {items} in order of first appearance.",
    "Remove repeats: {items}",
    "Write {items} again without duplicates.",
    "Keep only the first occurrence of each word: {items}",
    "Some words repeat in {items}. Give the list with the repeats taken out.",
    "Clean up {items} so that no word appears twice.",
)
def dedupe(rng: random.Random, pool: Pool) -> Task:
    distinct = rng.sample(WORDS, rng.randint(3, 5))
    items = distinct + rng.choices(distinct, k=rng.randint(1, 3))
    rng.shuffle(items)
    once = list(dict.fromkeys(items))
    return listing({"items": commas(items)}, once, once[:-1], style="any", ordered=False)


@family(
    "bullet_list",
    "Give me a bullet list of {n} {things}.",
    "List {n} {things} as bullet points.",
    "Write a bulleted list with {n} {things}.",
    "Name {n} {things}, one bullet per line.",
    "Make a bullet list of exactly {n} {things}.",
    "I need {n} {things} in a bullet list.",
    "Bullet points please: {n} {things}.",
    'Produce a list of {n} {things}, each on its own line starting with "- ".',
    "Could you jot down {n} {things} as bullets?",
    "Write {n} bullet points, each naming one of the {things}.",
)
def bullet_list(rng: random.Random, pool: Pool) -> Task:
    category = rng.choice(tuple(CATEGORIES))
    n = rng.randint(2, 5)
    items = rng.sample(CATEGORIES[category], n + 1)
    check = {"kind": "list", "style": "bullet", "count": n, "pool": list(CATEGORIES[category])}
    return answer(
        {"n": n, "things": f"{category}s"}, join_items(items[:n], "bullet"), join_items(items, "bullet"), check
    )


@family(
    "comma_list",
    "Rewrite this bullet list as a comma-separated list:\n{bullets}",
    "Put these on one line, separated by commas:\n{bullets}",
    "Turn the list below into a comma-separated line.\n{bullets}",
    "Join these items with commas:\n{bullets}",
    "Give me these items as a comma-separated list, in the same order:\n{bullets}",
    "Convert to a single line with commas between items:\n{bullets}",
    "Write the following as one comma-separated line:\n{bullets}",
    "Make this a comma-separated list:\n{bullets}",
    "{bullets}\n\nSame items, but as a comma-separated list please.",
    "Flatten this list into one line with commas:\n{bullets}",
)
def comma_list(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(WORDS, rng.randint(3, 6))
    return listing({"bullets": join_items(items, "bullet")}, items, items[:-1], style="comma")


# ---------------------------------------------------------------- extraction and formats

SENTENCES = (
    "On {date}, {name} sold {number} {product} in {town}.",
    "{name} paid {number} coins for {food} in {town} on {date}.",
    "{number} people came to hear {name} sing in {town} on {date}.",
    "In {town} on {date}, {name} counted {number} boats on the river.",
)
FIELDS = {"name": "the person's name", "number": "the quantity", "date": "the date", "town": "the town"}
ONE_WORD_OPTIONS = "fruit, animal, colour, tool or vehicle"
SPELLINGS = {"colour": ["colour", "color"]}  # accepted one-word answers besides the category itself


@family(
    "extract",
    "Extract {field} from this sentence: {sentence}",
    "What is {field} mentioned in the following sentence? {sentence}",
    'Here is a sentence: "{sentence}" Pull out {field}.',
    'From "{sentence}", give me {field}.',
    "Read this and tell me {field}: {sentence}",
    "Find {field} in: {sentence}",
    "{sentence}\n\nWhat is {field} in the sentence above?",
    'Identify {field} in this sentence: "{sentence}"',
    "Sentence: {sentence}\nReturn only {field}.",
    "I need {field} from this line: {sentence}",
)
def extract(rng: random.Random, pool: Pool) -> Task:
    values = {
        "name": rng.choice(pool.names["person"]),
        "number": str(rng.randint(30, 500)),
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)}",
        "town": rng.choice(pool.names["town"]),
    }
    sentence = rng.choice(SENTENCES).format(product=rng.choice(PRODUCTS), food=rng.choice(FOODS), **values)
    field, other = rng.sample(tuple(FIELDS), 2)
    return exact({"field": FIELDS[field], "sentence": sentence}, values[field], values[other])


@family(
    "json",
    "Write a JSON object with the keys {keys} for this: {description}",
    "Turn this into JSON with keys {keys}: {description}",
    "Fill in a JSON object with the keys {keys}, using this text: {description}",
    "{description}\n\nReturn these facts as a JSON object with the keys {keys}.",
    "Give me JSON (keys: {keys}) for the text below.\n{description}",
    "Read the text and output a JSON object with keys {keys}. Text: {description}",
    "Encode this as a JSON object whose keys are {keys}: {description}",
    "Produce only a JSON object with the keys {keys} from: {description}",
    "Here are some facts: {description} Put them in JSON with the keys {keys}.",
    "Convert to a JSON record (keys {keys}): {description}",
)
def json_format(rng: random.Random, pool: Pool) -> Task:
    """The facts are in the prompt: this family is about the format, not about knowing the world."""
    subject, facts = some_facts(rng, pool)
    description = " ".join(rng.choice(fact.sentences()) for fact in facts)
    return record(rng, pool, {"description": description}, subject, facts)


@family(
    "one_word",
    'Is "{item}" a {options}? Answer with one word.',
    'In exactly one word, which category is "{item}": {options}?',
    'Classify "{item}" as {options}. Reply with a single word.',
    'One word only: is "{item}" a {options}?',
    'Which kind of thing is "{item}" ({options})? Use one word.',
    'Give a one-word answer ({options}): what is "{item}"?',
    'Categorise "{item}" ({options}) in a single word.',
    'Pick one word from {options} that describes "{item}".',
    'Using just one word, tell me whether "{item}" is a {options}.',
    'Respond with a single word ({options}): what is "{item}"?',
)
def one_word(rng: random.Random, pool: Pool) -> Task:
    category, wrong = rng.sample(tuple(CATEGORIES), 2)
    check = {"kind": "one_word", "answers": SPELLINGS.get(category, [category])}
    return answer({"item": rng.choice(CATEGORIES[category]), "options": ONE_WORD_OPTIONS}, category, wrong, check)


# ---------------------------------------------------------------- compositions (held out)


@composition(
    "knowledge+json",
    "Using what you know about {name}, write a JSON object with the keys {keys}.",
    "Return a JSON object about {name} with the keys {keys}.",
    "Describe {name} as JSON with exactly the keys {keys}.",
)
def knowledge_json(rng: random.Random, pool: Pool) -> Task:
    subject, facts = some_facts(rng, pool)
    return record(rng, pool, {"name": subject}, subject, facts)


@composition(
    "knowledge+uppercase",
    "Write {about} in capital letters.",
    "Give me {about}, in all caps.",
    "What is {about}? Answer in uppercase.",
)
def knowledge_uppercase(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.words)
    return upper({"about": fact.about}, fact.value, [fact])


@composition(
    "knowledge+reverse_word",
    "Spell {about} backwards.",
    "Write {about} in reverse, letter by letter.",
    "What is {about}, written back to front?",
)
def knowledge_reverse(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.words)
    return backwards({"about": fact.about}, fact.value, [fact])


@composition(
    "knowledge+first_letter",
    "What is the first letter of {about}?",
    "Which letter does {about} start with?",
    "Give only the first letter of {about}.",
)
def knowledge_initial(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.words)
    return initial({"about": fact.about}, fact.value, [fact])


@composition(
    "knowledge+count_letters",
    "Think of {about}. How many letters does that word have?",
    "Count the letters in the word that is {about}.",
    "How many letters long is {about}, as a word?",
)
def knowledge_letters(rng: random.Random, pool: Pool) -> Task:
    fact = rng.choice(pool.words)
    return letter_count({"about": fact.about}, fact.value, [fact])


@composition(
    "knowledge+compare_numbers",
    "Whose {noun} is larger, {a}'s or {b}'s? Answer with the name.",
    "Which has the larger {noun}: {a} or {b}?",
    "Compare the {noun} of {a} and of {b}. Name the one with the larger value.",
)
def knowledge_compare(rng: random.Random, pool: Pool) -> Task:
    while True:
        a = rng.choice(pool.numeric)
        rivals = [f for f in pool.numeric if f.key == a.key and f.value != a.value]
        if rivals:
            break
    b = rng.choice(rivals)
    winner, loser = (a, b) if int(a.value) > int(b.value) else (b, a)
    return exact({"a": a.subject, "b": b.subject, "noun": a.attribute.noun}, winner.subject, loser.subject, [a, b])


@composition(
    "arithmetic+json",
    'Give the sum and the product of {a} and {b} as a JSON object with the keys "sum" and "product".',
    'Compute {a} + {b} and {a} * {b}; reply with JSON using the keys "sum" and "product".',
    'For the numbers {a} and {b}, return a JSON object {{"sum": ..., "product": ...}}.',
)
def arithmetic_json(rng: random.Random, pool: Pool) -> Task:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return json_object({"a": a, "b": b}, {"sum": a + b, "product": a * b}, {"sum": a + b, "product": a * b + 1})


@composition(
    "sort_list+bullet_list",
    "Sort these words alphabetically and give them as a bullet list: {items}",
    "Put {items} in alphabetical order, one bullet per word.",
    "Make a bullet list of these words in A to Z order: {items}",
)
def sorted_bullets(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(WORDS, rng.randint(3, 6))
    return listing({"items": commas(items)}, sorted(items), items[::-1], style="bullet")
