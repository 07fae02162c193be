"""The phrasings instructions are worded in, and their split per suite seed into training, development and held-out.

A prompt is a request frame ("Could you tell me {ask}?") around a family's ask, inside up to four wrappers: a
greeting, a context, a request about the answer and a closing ("Hi, hope you are well. This is for a quiz. ...
Answer without explaining. Thanks for your help."). Yes/no questions have their own frames ("Is it true that
{ask}? Answer yes or no."). A small grammar gives over a hundred frames and over a hundred wrappers; every suite
seed splits them afresh into training phrasings (the only ones any training text uses: corpus, midtraining mix,
demonstrations, comparisons, RL prompts, ptx batches), development phrasings (held out in a development suite, for
tuning) and held-out phrasings (held_out_paraphrases only). The training phrasings are split again: the "rl" ones are
held back from every text that answers an instruction before RL (the demonstrations, the synthetic comparisons, the
corpus's question pages), so that the RL and comparison prompts, drawn over all training phrasings, are broader than
the SFT prompts, as InstructGPT's PPO prompts were new requests; the "sft" ones are the rest. The corpus's notes use
all training phrasings: they are language a pretrained model knows, not demonstrations.

"Held out" is strict. A phrasing is compared as words (lower case, punctuation dropped, a slot as one word):
- no held-out or development phrasing contains a training phrasing or is contained in one ("Could you give me
  {ask}?" holds "Give me {ask}."): the training one is dropped from the seed's pool;
- every held-out or development phrasing has a distinctive 4-gram, one that no other phrasing of the pool holds, and
  `leaked_phrasings` searches training texts for those 4-grams (the leakage test runs it on every training text).
Its words may appear elsewhere (a model must know them); its phrasing may not. An rl phrasing has a 4-gram of its own
too, so `leaked_phrasings(..., role="rl")` finds one written into the SFT demonstrations.
"""

import functools
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

ROLES = ("train", "dev", "held_out", "sft", "rl")  # "sft" and "rl" split "train"
GRAM = 4  # the length of the word n-grams that make a phrasing distinctive
RL_SHARE = 0.2  # of each kind's training phrasings held back from SFT for the RL and comparison prompts (at most)


def _grid(patterns: Iterable[str], **slots: Iterable[str]) -> tuple[str, ...]:
    """Every pattern with every combination of its named slots ({lead}, {verb}, ...), in a stable order."""
    out: list[str] = []
    for pattern in patterns:
        names = [name for name in slots if f"{{{name}}}" in pattern]
        combos: list[dict[str, str]] = [{}]
        for name in names:
            combos = [{**combo, name: value} for combo in combos for value in slots[name]]
        out += [_fill(pattern, combo) for combo in combos]
    return tuple(dict.fromkeys(out))


def _fill(pattern: str, values: dict[str, str]) -> str:
    """`pattern` with its named slots filled, `{ask}` left as it is; a sentence starts with a capital."""
    for name, value in values.items():
        pattern = pattern.replace(f"{{{name}}}", value)
    return pattern[0].upper() + pattern[1:]


VERBS = ("tell me", "give me", "show me", "write", "find", "state", "name", "work out", "write down", "let me know")
# Request frames around a noun-phrase ask ("the first letter of pear"): a lead and a verb, or a question.
FRAMES = _grid(
    (
        "{verb} {ask}.",
        "please {verb} {ask}.",
        "{modal} you {verb} {ask}?",
        "{wish} you to {verb} {ask}.",
        "go ahead and {verb} {ask}.",
        "what is {ask}?",
        "do you know {ask}?",
        "I need {ask}.",
        "reply with {ask}.",
        "I would like to know {ask}.",
        "I am trying to find out {ask}.",
        "I wonder what {ask} is.",
        "can you figure out {ask} for me?",
        "help me find {ask}.",
    ),
    verb=VERBS,
    modal=("can", "could", "would", "will"),
    wish=("I'd like", "I want", "I need"),
)
# Yes/no questions around a statement ("the job of Bralo Kinet is baker"); the instruction comes first, so that the
# words of a combination run together (a 4-gram of its own) instead of meeting only across the slot.
YES_NO_FRAMES = _grid(
    ("{instruction}: {question} {ask}?", "{question} {ask}? Answer yes or no."),
    instruction=(  # each ends in its own word, so that it and the question share a 4-gram no other frame has
        "answer yes or no",
        "yes or no only",
        "just yes or no, please",
        "reply with a yes or no answer",
        "yes or no, nothing more",
    ),
    question=(
        "is it true that",
        "is it the case that",
        "would you say that",
        "am I right that",
        "do you agree that",
        "is it so that",
    ),
)
WRAPPERS = {
    "greetings": _grid(
        ("{hello}!", "{hello}, {pleasantry}."),
        hello=("hi", "hello", "hey", "good morning", "good evening", "greetings"),
        pleasantry=(
            "hope you are well",
            "I hope your day is going well",
            "nice to talk to you",
            "I trust you are well",
        ),
    ),
    "contexts": _grid(
        ("{who} asked me this.", "this is for {what}.", "{feeling}."),
        who=("my friend", "my teacher", "my sister", "a colleague", "my neighbour"),
        what=("a quiz", "my homework", "a game night", "a crossword", "a school project"),
        feeling=("quick question", "I need some help", "I am curious", "I have a question for you", "I am stuck"),
    ),
    "requests": _grid(
        ("{manner}.", "please answer {how}.", "answer {how}."),
        manner=("be brief", "keep it short", "just the answer, please", "no explanation needed"),
        how=(
            "without explaining",
            "in as few words as possible",
            "with nothing but the answer",
            "very briefly",
            "in one or two words",
            "with no extra words",
        ),
    ),
    "closings": _grid(
        ("{thanks}.", "{thanks} {extra}."),
        thanks=("thanks", "thank you", "many thanks", "thanks a lot"),
        extra=("for your help", "in advance", "for this", "for your time"),
    ),
}
POOL: dict[str, tuple[str, ...]] = {"frames": FRAMES, "yes_no": YES_NO_FRAMES, **WRAPPERS}
# how many phrasings of each kind a seed holds out (and as many for development)
HELD_OUT = {"frames": 8, "yes_no": 3, "greetings": 4, "contexts": 4, "requests": 3, "closings": 3}


def words(text: str) -> list[str]:
    """A phrasing or text as words: lower case, punctuation dropped, a slot ({ask}) one word."""
    return re.findall(r"\{\w+\}|[a-z0-9']+", text.lower())


def grams(phrasing: str) -> set[str]:
    """The phrasing's word 4-grams that hold no slot (a slot stands for any words, so a gram stops at it)."""
    found = set()
    for run in re.split(r"\{\w+\}", phrasing):
        run_words = words(run)
        found |= {" ".join(run_words[i : i + GRAM]) for i in range(len(run_words) - GRAM + 1)}
    return found


def contains(outer: str, inner: str) -> bool:
    """Whether `inner` occurs in `outer` as a run of words (slots included)."""
    return f" {' '.join(words(inner))} " in f" {' '.join(words(outer))} "


@dataclass(frozen=True)
class Phrasings:
    """One seed's split: role -> kind -> phrasings; `dropped` phrasings are used by no split (they contain, or lie
    inside, a held-out or development one). "train", "dev" and "held_out" are disjoint; "train" is "sft" plus "rl"."""

    seed: int
    roles: dict[str, dict[str, tuple[str, ...]]]
    dropped: tuple[str, ...]

    def of(self, role: str) -> list[str]:
        """Every phrasing of a role, all kinds together."""
        return [phrasing for kind in POOL for phrasing in self.roles[role][kind]]

    def distinctive(self, phrasing: str, apart_from: str = "train") -> set[str]:
        """The 4-grams of a phrasing that no phrasing of role `apart_from` holds: "train" for a held-out or development
        phrasing, "sft" for an rl one."""
        others = self.of(apart_from)
        return {gram for gram in grams(phrasing) if not any(f" {gram} " in f" {' '.join(words(t))} " for t in others)}


@functools.lru_cache(maxsize=16)
def split_phrasings(seed: int) -> Phrasings:
    """The seed's split of the pool: held-out and development phrasings drawn among those with a 4-gram of their
    own, none containing another; training phrasings are the rest, less any that contains or lies inside them. The rl
    phrasings are drawn by a generator of their own among the training ones with a 4-gram of their own, so the
    held-out and development draws are those of a split without them."""
    rng = random.Random(f"{seed}/phrasings")
    counts = gram_counts()
    chosen: dict[str, dict[str, list[str]]] = {role: {kind: [] for kind in POOL} for role in ("dev", "held_out")}
    picked: list[str] = []
    for kind, pool in POOL.items():
        candidates = [p for p in pool if has_own_gram(p, counts)]
        rng.shuffle(candidates)
        for role in ("held_out", "dev"):
            for phrasing in candidates:
                if len(chosen[role][kind]) == HELD_OUT[kind]:
                    break
                if phrasing not in picked and not any(related(phrasing, other) for other in picked):
                    chosen[role][kind].append(phrasing)
                    picked.append(phrasing)
            if len(chosen[role][kind]) < HELD_OUT[kind]:
                raise ValueError(f"the phrasing pool has too few distinct {kind} to hold {HELD_OUT[kind]} out")
    train = {
        kind: tuple(p for p in pool if p not in picked and not any(related(p, q) for q in picked))
        for kind, pool in POOL.items()
    }
    dropped = tuple(p for kind, pool in POOL.items() for p in pool if p not in picked and p not in train[kind])
    rl = held_back(seed, train, counts)
    roles = {
        "train": train,
        **{role: {kind: tuple(ps) for kind, ps in kinds.items()} for role, kinds in chosen.items()},
        "sft": {kind: tuple(p for p in train[kind] if p not in rl[kind]) for kind in POOL},
        "rl": rl,
    }
    return Phrasings(seed, roles, dropped)


def gram_counts() -> dict[str, int]:
    """How many phrasings of the pool hold each 4-gram."""
    counts: dict[str, int] = {}
    for phrasing in (phrasing for kind in POOL for phrasing in POOL[kind]):
        for gram in grams(phrasing):
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def has_own_gram(phrasing: str, counts: dict[str, int]) -> bool:
    """Whether the phrasing holds a 4-gram no other phrasing of the pool holds."""
    return any(counts[gram] == 1 for gram in grams(phrasing))


def held_back(seed: int, train: dict[str, tuple[str, ...]], counts: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """The seed's rl phrasings: of each kind, `RL_SHARE` of its training phrasings (fewer where fewer have a 4-gram no
    other phrasing holds: that 4-gram is what shows one is absent from a text), in pool order."""
    rng = random.Random(f"{seed}/phrasings/rl")
    rl = {}
    for kind, phrasings in train.items():
        candidates = [p for p in phrasings if has_own_gram(p, counts)]
        chosen = set(rng.sample(candidates, min(len(candidates), round(RL_SHARE * len(phrasings)))))
        rl[kind] = tuple(p for p in phrasings if p in chosen)
    return rl


def related(a: str, b: str) -> bool:
    return contains(a, b) or contains(b, a)


def leaked_phrasings(phrasings: Phrasings, texts: Iterable[str], role: str = "held_out") -> dict[str, list[str]]:
    """The phrasings of `role` whose distinctive 4-grams occur in `texts` (phrasing -> the 4-grams found); empty when
    no text uses one. `texts` are every text a training stage reads (for "rl": every text that answers an
    instruction before RL; an rl phrasing's 4-grams are those no SFT phrasing holds)."""
    joined = " " + " \n ".join(" ".join(words(text)) for text in texts) + " "
    apart_from = "sft" if role == "rl" else "train"
    leaks = {}
    for phrasing in phrasings.of(role):
        found = sorted(gram for gram in phrasings.distinctive(phrasing, apart_from) if f" {gram} " in joined)
        if found:
            leaks[phrasing] = found
    return leaks
