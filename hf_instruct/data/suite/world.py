"""The synthetic world the suite talks about: invented entities, their facts, and the views each split may use.

Entities are people, towns, animals and companies with names built from syllables, so no pretrained model can know
them: whatever a model knows about the world it learnt from the pretraining corpus. Some entities are held out: they
appear only in that corpus, never in SFT data or comparisons, so questions about them test whether instruction
following transfers to knowledge learnt in pretraining alone.
"""

import random
from dataclasses import dataclass

JOBS = ("baker", "farmer", "teacher", "potter", "sailor", "miner", "weaver", "doctor", "painter", "builder", "fisher")
JOBS += ("tailor", "singer", "clerk", "smith", "nurse")
FOODS = ("soup", "cheese", "rice", "honey", "bread", "plums", "pears", "beans", "noodles", "carrots", "figs", "olives")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "brown", "pink", "silver")
SPECIES = ("cat", "dog", "goat", "horse", "parrot", "rabbit", "owl", "pig", "duck", "sheep", "mule", "fox")
PRODUCTS = ("ropes", "boots", "candles", "barrels", "lamps", "bricks", "hats", "soap", "clocks", "baskets", "kettles")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October")
MONTHS += ("November", "December")
CATEGORIES = {  # the one_word and bullet_list families name these; their names run from 3 to 10 letters
    "fruit": ("apple", "pear", "plum", "cherry", "mango", "lemon", "peach", "grape", "melon", "apricot"),
    "animal": SPECIES,
    "colour": COLOURS,
    "tool": ("hammer", "saw", "spade", "drill", "chisel", "wrench", "rake", "axe", "pliers", "shovel"),
    "vehicle": ("cart", "boat", "bus", "train", "bicycle", "truck", "wagon", "sled", "tram", "canoe"),
    "instrument": ("drum", "flute", "harp", "piano", "violin", "guitar", "trumpet", "cello", "banjo", "organ"),
    "furniture": ("chair", "table", "sofa", "bed", "desk", "stool", "bench", "shelf", "cupboard", "wardrobe"),
    "clothing": ("shirt", "coat", "scarf", "glove", "sock", "skirt", "jacket", "dress", "sweater", "vest"),
    "drink": ("tea", "coffee", "milk", "juice", "water", "cocoa", "lemonade", "cider", "soda", "wine"),
    "bird": ("robin", "crow", "eagle", "swan", "sparrow", "pigeon", "hawk", "gull", "finch", "heron"),
    "toy": ("ball", "doll", "kite", "puzzle", "marble", "rattle", "puppet", "yoyo"),
}
PLURALS = {category: f"{category}s" for category in CATEGORIES} | {
    "furniture": "pieces of furniture",
    "clothing": "pieces of clothing",
}
# Every word the suite spells, capitalises, counts and lists: the category names too, since the one_word compositions
# transform them ("the number of letters in the kind of thing a peach is"), and a BPE model knows a word's letters
# only where some text spells them.
WORDS = tuple(
    sorted({*JOBS, *FOODS, *PRODUCTS, *CATEGORIES, *(item for items in CATEGORIES.values() for item in items)})
)
OPERATIONS = {"+": ("+", "plus"), "-": ("-", "minus"), "*": ("*", "x", "times")}  # how each operation is written

ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ae", "io")
CODAS = ("", "", "", "n", "r", "l", "s", "k", "m")
TOWN_ENDINGS = ("by", "ton", "ford", "wick", "mere", "holt")
COMPANY_ENDINGS = ("Works", "Mills", "Trading", "Supply", "Company")


@dataclass(frozen=True)
class Attribute:
    """A kind of fact: how questions name it, which values it takes, and how documents state it."""

    noun: str  # "the {noun} of {name}"
    domain: tuple[str, ...] | range | str  # a vocabulary, a number range, or the kind of entity it names
    phrasings: tuple[str, ...]  # besides "The {noun} of {name} is {value}."; {a_value} is the value with a/an


ATTRIBUTES = {
    "job": Attribute(
        "job", JOBS, ("{name} works as {a_value}.", "{name} is {a_value} by trade.", "By trade, {name} is {a_value}.")
    ),
    "home_town": Attribute(
        "home town",
        "town",
        ("{name} lives in {value}.", "{name}'s home town is {value}.", "{name} has a house in {value}."),
    ),
    "age": Attribute(
        "age",
        range(18, 81),
        ("{name} is {value} years old.", "{name} turned {value} this year.", "{name}'s age is {value}."),
    ),
    "favourite_food": Attribute(
        "favourite food",
        FOODS,
        (
            "{name}'s favourite food is {value}.",
            "{name} loves to eat {value}.",
            "Above all other food, {name} likes {value}.",
        ),
    ),
    "favourite_colour": Attribute(
        "favourite colour",
        COLOURS,
        (
            "{name}'s favourite colour is {value}.",
            "{name} likes the colour {value} best.",
            "Of all colours, {name} loves {value}.",
        ),
    ),
    "siblings": Attribute(
        "number of siblings",
        range(2, 9),
        (
            "{name} has {value} siblings.",
            "{name} grew up with {value} siblings.",
            "{name} has {value} brothers and sisters.",
        ),
    ),
    "bridges": Attribute(
        "number of bridges",
        range(2, 16),
        (
            "{name} has {value} bridges.",
            "There are {value} bridges in {name}.",
            "{value} bridges cross the river in {name}.",
        ),
    ),
    "roof_colour": Attribute(
        "roof colour",
        COLOURS,
        (
            "The roofs of {name} are {value}.",
            "In {name}, the roofs are painted {value}.",
            "{name} is known for its {value} roofs.",
        ),
    ),
    "market_day": Attribute(
        "market day",
        DAYS,
        (
            "The market in {name} is held on {value}.",
            "Market day in {name} is {value}.",
            "Every {value}, {name} holds its market.",
        ),
    ),
    "species": Attribute(
        "species",
        SPECIES,
        ("{name} is {a_value}.", "{name} is {a_value} kept as a pet.", "The animal called {name} is {a_value}."),
    ),
    "coat_colour": Attribute(
        "coat colour",
        COLOURS,
        ("{name} has a {value} coat.", "The coat of {name} is {value}.", "{name}'s fur is {value}."),
    ),
    "weight": Attribute(
        "weight in kilograms",
        range(2, 61),
        (
            "{name} weighs {value} kilograms.",
            "On the scales, {name} comes to {value} kilograms.",
            "{name} is {value} kg heavy.",
        ),
    ),
    "owner": Attribute(
        "owner", "person", ("{name} belongs to {value}.", "{value} owns {name}.", "{name}'s owner is {value}.")
    ),
    "product": Attribute(
        "main product",
        PRODUCTS,
        (
            "{name} makes {value}.",
            "{name} is a company that produces {value}.",
            "The main thing {name} sells is {value}.",
        ),
    ),
    "location": Attribute(
        "location",
        "town",
        (
            "{name} is based in {value}.",
            "{name} has its workshop in {value}.",
            "The offices of {name} are in {value}.",
        ),
    ),
    "founder": Attribute(
        "founder",
        "person",
        ("{name} was founded by {value}.", "{value} founded {name}.", "{name} was started by {value}."),
    ),
    "workers": Attribute(
        "number of workers",
        range(5, 100),
        ("{name} employs {value} workers.", "{value} people work at {name}.", "{name} has {value} workers."),
    ),
}
# Kinds in creation order (relations point to kinds made earlier), with their share of the world and their attributes.
KINDS = {
    "town": (0.15, ("bridges", "roof_colour", "market_day")),
    "person": (0.5, ("job", "home_town", "age", "favourite_food", "favourite_colour", "siblings")),
    "animal": (0.2, ("species", "coat_colour", "weight", "owner")),
    "company": (0.15, ("product", "location", "founder", "workers")),
}


def article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def arithmetic_problem(rng: random.Random) -> tuple[int, str, int, int]:
    """A small problem (a, operation, b, result) with a non-negative result, for the corpus and the tasks alike:
    operands up to 10 (2 to 9 for products), a table of about 220 facts that a small model can learn."""
    op = rng.choice(tuple(OPERATIONS))
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return a, op, b, a * b
    a, b = rng.randint(1, 10), rng.randint(1, 10)
    if op == "-":
        a, b = max(a, b), min(a, b)
        return a, op, b, a - b
    return a, op, b, a + b


@dataclass(frozen=True)
class Fact:
    subject: str
    key: str
    value: str

    @property
    def attribute(self) -> Attribute:
        return ATTRIBUTES[self.key]

    @property
    def about(self) -> str:
        """What a question asks for: "the job of Bralo Kinet"."""
        return f"the {self.attribute.noun} of {self.subject}"

    @property
    def numeric(self) -> bool:
        return isinstance(self.attribute.domain, range)

    @property
    def relation(self) -> bool:
        return isinstance(self.attribute.domain, str)

    @property
    def triple(self) -> list[str]:
        return [self.subject, self.key, self.value]

    def sentences(self) -> list[str]:
        """Every phrasing of the fact as the corpus writes it; the canonical one first."""
        slots = {"name": self.subject, "value": self.value, "a_value": article(self.value)}
        phrasings = ("The {noun} of {name} is {value}.", *self.attribute.phrasings)
        return [p.format(noun=self.attribute.noun, **slots) for p in phrasings]


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str
    values: dict[str, str]  # attribute key -> value as written

    @property
    def facts(self) -> list[Fact]:
        return [Fact(self.name, key, value) for key, value in self.values.items()]


class Pool:
    """The part of the world one split may talk about: facts about its entities, and the names it may mention."""

    def __init__(self, facts: list[Fact], names: dict[str, list[str]]):
        self.facts, self.names = facts, names
        self.by_subject: dict[str, list[Fact]] = {}
        for fact in facts:
            self.by_subject.setdefault(fact.subject, []).append(fact)
        self.numeric = [f for f in facts if f.numeric]
        self.words = [f for f in facts if f.value.isalpha()]  # single-word values, for string tasks on facts
        self.links = [f for f in facts if f.relation and f.value in self.by_subject]  # for two-hop questions

    def other_value(self, fact: Fact, rng: random.Random) -> str:
        """A plausible wrong value for the fact: a nearby number, another word, another entity of the same kind."""
        domain = fact.attribute.domain
        if isinstance(domain, range):
            value = int(fact.value)
            return str(rng.choice([v for v in range(max(domain.start, value - 5), value + 6) if v != value]))
        options = self.names[domain] if isinstance(domain, str) else domain
        return rng.choice([v for v in options if v != fact.value])


@dataclass(frozen=True)
class World:
    entities: list[Entity]
    held_out: frozenset[str]  # names of the entities that only the pretraining corpus mentions

    def pool(self, held_out: bool = False) -> Pool:
        """The training view (facts about training entities that name no held-out entity), or the held-out view."""
        subjects = [e for e in self.entities if (e.name in self.held_out) == held_out]
        facts = [f for e in subjects for f in e.facts if held_out or f.value not in self.held_out]
        names = {
            kind: [e.name for e in self.entities if e.kind == kind and (held_out or e.name not in self.held_out)]
            for kind in KINDS
        }
        return Pool(facts, names)


def make_world(seed: int, num_entities: int, held_out_fraction: float) -> World:
    """Entities of every kind in their shares; the last `held_out_fraction` of each kind (at least one) held out."""
    rng = random.Random(f"{seed}/world")
    used: set[str] = set(WORDS) | {word.lower() for word in (*COLOURS, *DAYS, *MONTHS, *COMPANY_ENDINGS)}
    entities, held_out = [], set()
    for kind, (share, keys) in KINDS.items():
        count = max(2, round(num_entities * share))
        made = []
        for _ in range(count):
            values = {}
            for key in keys:
                domain = ATTRIBUTES[key].domain
                if isinstance(domain, str):
                    values[key] = rng.choice([e.name for e in entities if e.kind == domain])
                else:
                    values[key] = str(rng.choice(domain))
            made.append(Entity(_invent_name(kind, rng, used), kind, values))
        entities += made
        held_out |= {e.name for e in made[-max(1, round(count * held_out_fraction)) :]}
    return World(entities, frozenset(held_out))


def _invent_name(kind: str, rng: random.Random, used: set[str]) -> str:
    """A name whose every invented word is new, so a word-boundary search for one name never finds another."""
    if kind == "person":
        return f"{_invent_word(rng, used)} {_invent_word(rng, used)}"
    if kind == "town":
        return _invent_word(rng, used, ending=rng.choice(TOWN_ENDINGS))
    if kind == "company":
        return f"{_invent_word(rng, used)} {rng.choice(COMPANY_ENDINGS)}"
    return _invent_word(rng, used)


def _invent_word(rng: random.Random, used: set[str], ending: str = "") -> str:
    while True:
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(2)) + (ending or rng.choice(CODAS))
        if word not in used:
            used.add(word)
            return word.capitalize()
