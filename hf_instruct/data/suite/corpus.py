"""The pretraining corpus: natural-language documents that state every fact of the world many times.

Encyclopedic entries, short stories, registers, arithmetic drills, spelling notes, notes between people and
question-and-answer pages, in several phrasings each, so a tiny model can learn the facts (and the skills the tasks
lean on) before it ever sees an instruction. Three entries per entity come first, each fact in a different
phrasing, so every fact is stated at least three ways however small the corpus is; random documents then fill it to
the requested size. Only the seed's training phrasings appear in it, never a held-out or development one: its notes
use all of them, its question pages (answered instructions) only the SFT ones, as the rl phrasings are held back from
every answered instruction before RL. Its questions ask only about entities SFT may name: the base model is then
asked few-shot in the question-and-answer format it read ("Question: ... Answer: ..."), so what it cannot do is
measured, not a format it never saw.
"""

import functools
import random

from .phrasings import Phrasings
from .tasks import FAMILY_TABLE, WRAPPER_KINDS
from .world import ATTRIBUTES, KINDS, OPERATIONS, WORDS, Entity, World, arithmetic_problem, article

QUESTION, ANSWER = "Question:", "Answer:"  # the plain question-and-answer format of the corpus and of a base's prompts
ASKED = tuple(name for name in FAMILY_TABLE if name != "multi_turn")  # one-turn families a question page asks
KIND_NOUNS = {"town": "a town", "person": "a person", "animal": "an animal", "company": "a company"}
STORIES = {
    "person": (
        "{name} woke early that day. Being {a_job}, {name} had plenty to do in {home_town}. At {age}, {name} still "
        "walked everywhere, and on the way home {name} bought some {favourite_food}, as always. Everything in "
        "{name}'s kitchen is {favourite_colour}, the colour {name} likes best.",
        "Ask anyone in {home_town} about {name} and they will tell you the same things: {name} is {age} years old, "
        "works as {a_job}, has {siblings} brothers and sisters, and never says no to {favourite_food}.",
        "A letter from {name}. Dear friend, life in {home_town} is quiet. I am still {a_job}, and at {age} I feel as "
        "strong as ever. My {siblings} siblings visit often. We eat {favourite_food} and I wear {favourite_colour}, "
        "which is still my favourite colour.",
    ),
    "town": (
        "{name} is a small town. {bridges} bridges cross its river, and its roofs are {roof_colour}. On {market_day} "
        "the whole town comes to the market.",
        "Travellers to {name} remember the {roof_colour} roofs first. Then they count the bridges: there are "
        "{bridges} of them. If you arrive on {market_day}, you will find the market in full swing.",
    ),
    "animal": (
        "{name} is {a_species} with a {coat_colour} coat. {name} lives with {owner}, who says that {name} weighs "
        "{weight} kilograms.",
        "Every morning {owner} feeds {name}, a {coat_colour} {species}. At {weight} kilograms, {name} is hard to "
        "lift.",
    ),
    "company": (
        "{name} was founded by {founder}. From its workshop in {location}, the company makes {product}, and "
        "{workers} people work there today.",
        "If you need {product}, go to {name} in {location}. {founder} started the company, and it now has {workers} "
        "workers.",
    ),
}


def write_corpus(world: World, rng: random.Random, megabytes: float, phrasings: Phrasings) -> list[str]:
    """Documents (one string each) totalling about `megabytes` MB, never fewer than three entries per entity; notes
    and question pages use the training phrasings of `phrasings` only."""
    documents = [entry(entity, shift) for shift in range(3) for entity in world.entities]
    size = sum(map(len, documents))
    phrased = [functools.partial(writer, phrasings=phrasings) for writer in (note, questions)]
    writers, weights = (random_entry, story, register, drill, spelling, *phrased), (3, 3, 2, 1, 1, 1, 1)
    while size < megabytes * 1e6:
        documents.append(rng.choices(writers, weights)[0](world, rng))
        size += len(documents[-1])
    rng.shuffle(documents)
    return documents


def entry(entity: Entity, shift: int, rng: random.Random | None = None) -> str:
    """An encyclopedic entry; `shift` picks the phrasing of each fact, so consecutive shifts phrase every fact anew.
    With `rng`, the facts come in a random order (every sentence names the entity, so any order reads well): a fact
    is then not learnt as "the sentence after the age" but as a property of the name, which is what makes it
    retrievable by a question (Allen-Zhu & Li, Physics of Language Models 3.1)."""
    facts = list(enumerate(entity.facts))
    if rng is not None:
        rng.shuffle(facts)
    sentences = [f"{entity.name} is {KIND_NOUNS[entity.kind]}."]
    for index, fact in facts:
        phrasings = fact.sentences()
        sentences.append(phrasings[(shift + index) % len(phrasings)])
    return f"{entity.name}\n\n" + " ".join(sentences)


def random_entry(world: World, rng: random.Random) -> str:
    return entry(rng.choice(world.entities), rng.randrange(100), rng)


def story(world: World, rng: random.Random) -> str:
    entity = rng.choice(world.entities)
    slots = {"name": entity.name, **entity.values, **{f"a_{k}": article(v) for k, v in entity.values.items()}}
    return rng.choice(STORIES[entity.kind]).format(**slots)


def register(world: World, rng: random.Random) -> str:
    """One attribute for several entities of a kind, as a list."""
    kind = rng.choice(tuple(KINDS))
    key = rng.choice(KINDS[kind][1])
    entities = [e for e in world.entities if e.kind == kind]
    lines = [f"{e.name}: {e.values[key]}" for e in rng.sample(entities, min(8, len(entities)))]
    return f"Register of {ATTRIBUTES[key].noun}\n\n" + "\n".join(lines)


def note(world: World, rng: random.Random, phrasings: Phrasings) -> str:
    """A short note between people, opened and closed with the phrases instructions are wrapped in and asking a
    question in one of the request frames (training ones only): a model should know them as language, as any
    pretrained model knows "Cheers!" or "I'd like to know", before it sees them around an instruction."""
    entity = rng.choice(world.entities)
    facts = rng.sample(entity.facts, min(2, len(entity.facts)))
    training = phrasings.roles["train"]
    greeting, context, request, closing = (rng.choice(("", *training[kind])) for kind in WRAPPER_KINDS)
    question = rng.choice(training["frames"]).format(ask=f"the news about {entity.name}")
    body = " ".join(rng.choice(fact.sentences()) for fact in facts)
    text = " ".join(part for part in (greeting, context, question, body, request, closing) if part)
    return f"A note about {entity.name}\n\n{text}"


def questions(world: World, rng: random.Random, phrasings: Phrasings) -> str:
    """A page of questions and answers: tasks of the one-turn families about the entities SFT may name, asked in
    the SFT phrasings (answered instructions, like the demonstrations), in the plain format a base model is asked
    in."""
    pool = world.pool()
    pairs = []
    for _ in range(rng.randint(3, 5)):
        family = FAMILY_TABLE[rng.choice(ASKED)]
        template = family.draw(rng, phrasings, "sft")
        pairs.append(family.render(template, family.make(rng, pool)))
    return "Questions and answers\n\n" + "\n\n".join(plain_dialogue(messages) for messages in pairs)


def plain_dialogue(messages: list[dict[str, str]]) -> str:
    """A conversation as question-and-answer text: "Question: ...\nAnswer: ..." per exchange; a conversation that ends
    with a user turn ends with "Answer:", for a model to continue."""
    lines = [
        f"{QUESTION if m['role'] == 'user' else ANSWER} {m['content']}" for m in messages if m["role"] != "system"
    ]
    if messages and messages[-1]["role"] == "user":
        lines.append(ANSWER)
    return "\n\n".join("\n".join(lines[i : i + 2]) for i in range(0, len(lines), 2))


def drill(world: World, rng: random.Random) -> str:
    """Arithmetic facts, written with symbols or words."""
    lines = []
    for _ in range(10):
        a, op, b, result = arithmetic_problem(rng)
        lines.append(f"{a} {rng.choice(OPERATIONS[op])} {b} {rng.choice(('is', '='))} {result}.")
    return "Arithmetic practice\n\n" + "\n".join(lines)


def spelling(world: World, rng: random.Random) -> str:
    """Spelling notes: length, first letter and the word in capitals (no quotes: a word glued to a quote is another
    token than the same word after a space)."""
    notes = [
        f"The word {w} has {len(w)} letters. It begins with {w[0]}, and in capitals it is {w.upper()}."
        for w in rng.sample(WORDS, 5)
    ]
    return "Spelling notes\n\n" + "\n".join(notes)
