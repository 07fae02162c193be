"""An embedded instruction-following suite, generated from a seed: no downloads, no data files.

It measures InstructGPT's claim offline and exactly: a small model trained to follow instructions beats a bigger
one that was only pretrained. A synthetic world of invented entities gives a pretraining corpus that states all its
facts; instruction demonstrations, comparisons, prompts for collecting comparisons and for RL, and three held-out
splits are built over 15 task families and 9 compositions of two of them, whose answers are checked exactly by
`verify`. Instructions come from a small grammar (`tasks.py`): thousands of training templates per family, and
held-out templates the training grammar cannot produce.

    suite = build_suite(SuiteConfig.tiny())
    row = suite["held_out_entities"][0]
    verify(row["check"], model_answer(row["messages"][:-1]))

The held-out splits are out of distribution and disjoint from SFT data and comparisons: held_out_entities asks
about entities that only the corpus mentions, held_out_paraphrases uses the seed's held-out request frames and
wrappers around training asks, and held_out_compositions asks for compositions (source+operation pairs) that no
training conversation combines; SFT trains the other pairs of the same grid.

The comparison prompts and the RL prompts are broader than the SFT prompts: worded in all the training phrasings,
among them the seed's rl phrasings, which no answered instruction before RL holds (see `phrasings.py`), and half of
the tasks of families with harder cases drawn from those (longer words to count, longer lists). They never name a
held-out entity, use a held-out or development phrasing or ask for a held-out composition.
"""

import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from .comparisons import reject
from .corpus import plain_dialogue, write_corpus
from .flaws import Flaws
from .phrasings import Phrasings, leaked_phrasings, split_phrasings
from .tasks import COMPOSITION_ROLES, COMPOSITION_TABLE, ENTITY_FAMILIES, FAMILY_TABLE, Family
from .verifiers import verify
from .world import Pool, make_world

FAMILIES: tuple[str, ...] = tuple(FAMILY_TABLE)
COMPOSITIONS: tuple[str, ...] = tuple(COMPOSITION_TABLE)  # all of them: the trained pairs and the held-out ones
HELD_OUT_COMPOSITIONS: tuple[str, ...] = tuple(name for name, role in COMPOSITION_ROLES.items() if role == "held_out")


SUITE_FILE = "suite.json"  # beside an exported suite: the config that builds it


@dataclass
class SuiteConfig:
    """The suite's sizes; the same config always builds the same suite. The defaults are the default pipeline's
    (recipes/default/pipeline.yaml, tested), so a command that names no suite uses the one its models read."""

    seed: int = 42
    num_entities: int = 120  # world size, some of each kind held out
    corpus_mb: float = 2.5  # approximate pretraining corpus size
    sft_examples: int = 10000
    comparisons: int = 6000
    comparison_prompts: int = 2000  # prompts whose sampled answers a labeler ranks (collected comparisons)
    rl_prompts: int = 2000  # PPO's and GRPO's prompts
    held_out_examples: int = 300  # per held-out split
    held_out_fraction: float = 0.2  # of each kind of entity (at least one), only in the pretraining corpus
    # For tuning a recipe: held_out_paraphrases uses the seed's development phrasings instead of its held-out ones
    # (no split uses the held-out ones then; no training text holds either), and the held-out compositions are
    # trained while stand-in pairs are held out.
    development: bool = False
    # The scale of the per-family profile of mistakes human writers make (flaws.py), applied to the SFT
    # demonstrations only: 0 keeps every demonstration perfect, 1 is the default profile, 2 doubles its rates.
    demonstration_flaws: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.demonstration_flaws, (int, float)) and self.demonstration_flaws >= 0):
            raise ValueError(
                f"SuiteConfig.demonstration_flaws must be a number >= 0 (0: perfect demonstrations, 1: the default "
                f"profile of writers' mistakes), got {self.demonstration_flaws!r}."
            )

    @classmethod
    def tiny(cls, seed: int = 0) -> "SuiteConfig":
        """For tests and CI: a 0.2 MB corpus and a few hundred examples, built in well under a second."""
        return cls(
            seed=seed,
            num_entities=30,
            corpus_mb=0.2,
            sft_examples=300,
            comparisons=150,
            comparison_prompts=60,
            rl_prompts=60,
            held_out_examples=60,
        )

    def describe(self) -> str:
        """One line naming every setting, for a command to print which suite it uses."""
        return (
            f"suite seed {self.seed}{' (development)' if self.development else ''}: {self.num_entities} entities, "
            f"{self.corpus_mb} MB corpus, {self.sft_examples} demonstrations, {self.comparisons} comparisons, "
            f"{self.comparison_prompts} comparison prompts, {self.rl_prompts} RL prompts, "
            f"{self.held_out_examples} examples per held-out split, demonstration flaws x{self.demonstration_flaws:g}"
        )


def build_suite(config: SuiteConfig | None = None, splits: Sequence[str] | None = None) -> datasets.DatasetDict:
    """The suite's splits (with `splits`, only those: each comes from its own seeded generator, so a held-out split
    alone is the same as in the whole suite, and takes a second where the whole default suite takes ~20):
    "pretrain": {"text"} (one document per row)
    "sft": {"messages", "family", "check", "template", "flaw"} (`flaw`: the kind of mistake its writer made, see
        flaws.py, or "" for a clean demonstration)
    "comparisons": {"prompt", "chosen", "rejected", "family", "broken", "check", "template"} (TRL conversational form)
    "comparison_prompts" / "rl_prompts": {"prompt", "family", "check", "template"} (a prompt: messages up to the last
        user turn, the reference answer left out)
    "held_out_entities" / "held_out_paraphrases" / "held_out_compositions": {"messages", "family", "check", "template"}
    where messages run up to and including the reference answer (the prompt is messages[:-1]), `check` is the JSON
    spec `verify` scores an answer with, and `template` ("family/core:frames.wrappers", indices into the family's
    asks and the phrasing pool) names the instruction template.
    """
    config = config or SuiteConfig()
    world = make_world(config.seed, config.num_entities, config.held_out_fraction)
    phrasings = split_phrasings(config.seed)
    train = world.pool()
    # development swaps the roles of the reported and the stand-in pairs, so it trains as many pairs as the real run
    trained_roles, held_out_role = (
        (("train", "held_out"), "dev") if config.development else (("train", "dev"), "held_out")
    )
    compositions = {role: [] for role in ("train", "dev", "held_out")}
    for name, composition in COMPOSITION_TABLE.items():
        compositions[COMPOSITION_ROLES[name]].append(composition)
    plain = list(FAMILY_TABLE.values())
    families = plain + [c for role in trained_roles for c in compositions[role]]
    held_out_compositions = compositions[held_out_role]
    paraphrased = (phrasings, "dev" if config.development else "held_out")
    # the SFT phrasings: the demonstrations', and those the held-out entities and compositions are asked in, so that
    # those splits measure one thing each (not also phrasings SFT never demonstrated and RL trained on)
    trained = (phrasings, "sft")
    broad = (phrasings, "train")  # every training phrasing: the prompts of collected comparisons and of RL

    def rng(split: str) -> random.Random:
        return random.Random(f"{config.seed}/{split}")

    makers = {
        "pretrain": lambda: {"text": write_corpus(world, rng("pretrain"), config.corpus_mb, phrasings)},
        "sft": lambda: example_columns(
            rng("sft"),
            families,
            trained,
            train,
            config.sft_examples,
            Flaws(rng("flaws"), config.demonstration_flaws, train),
        ),
        "comparisons": lambda: comparison_columns(rng("comparisons"), families, trained, train, config.comparisons),
        "comparison_prompts": lambda: prompt_columns(
            rng("comparison_prompts"), families, broad, train, config.comparison_prompts
        ),
        "rl_prompts": lambda: prompt_columns(rng("rl_prompts"), families, broad, train, config.rl_prompts),
        "held_out_entities": lambda: example_columns(
            rng("held_out_entities"),
            [FAMILY_TABLE[name] for name in ENTITY_FAMILIES],
            trained,
            world.pool(held_out=True),
            config.held_out_examples,
        ),
        "held_out_paraphrases": lambda: example_columns(
            rng("held_out_paraphrases"), plain, paraphrased, train, config.held_out_examples
        ),
        "held_out_compositions": lambda: example_columns(
            rng("held_out_compositions"), held_out_compositions, trained, train, config.held_out_examples
        ),
    }
    unknown = set(splits or ()) - set(makers)
    if unknown:
        raise ValueError(f"build_suite: unknown splits {sorted(unknown)}; expected some of {list(makers)}.")
    return datasets.DatasetDict({name: datasets.Dataset.from_dict(makers[name]()) for name in splits or makers})


def training_texts(suite: datasets.DatasetDict) -> list[str]:
    """Every text a training stage reads from the suite: the corpus (pretraining, midtraining, ptx batches, the
    tokenizer), the demonstrations (SFT, midtraining), the comparisons (reward model, DPO), the comparison prompts
    (answers sampled for a labeler to rank) and the RL prompts (PPO, GRPO)."""
    texts = list(suite["pretrain"]["text"])
    texts += [m["content"] for messages in suite["sft"]["messages"] for m in messages]
    for column in ("prompt", "chosen", "rejected"):
        texts += [m["content"] for messages in suite["comparisons"][column] for m in messages]
    for split in ("comparison_prompts", "rl_prompts"):
        texts += [m["content"] for messages in suite[split]["prompt"] for m in messages]
    return texts


def export_suite(
    suite: datasets.DatasetDict, directory: str | os.PathLike, config: SuiteConfig | None = None
) -> dict[str, Path]:
    """One JSONL file per split (`<split>.jsonl`), readable by the package's loaders, and with `config` the
    `suite.json` that names the suite (so a model trained on these files can be evaluated on the same suite);
    returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    if config is not None:
        (directory / SUITE_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    for split, rows in suite.items():
        paths[split] = directory / f"{split}.jsonl"
        with paths[split].open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows.to_list())
    return paths


def recorded_suite(model_path: str | os.PathLike) -> tuple[SuiteConfig, Path] | None:
    """The suite a model was trained on, as its run record names it: the `suite.json` beside any data file a stage
    of its history read (or in the pipeline's data folder beside the model); None when none is found."""
    from ...model_card import read_history  # here: it imports the training stack

    data = [Path(path) for record in read_history(str(model_path)) for path in record.get("data", [])]
    for candidate in [path.parent / SUITE_FILE for path in data] + [Path(model_path).parent / "data" / SUITE_FILE]:
        if candidate.is_file():
            return SuiteConfig(**json.loads(candidate.read_text())), candidate
    return None


def schedule(rng: random.Random, families: list[Family], count: int) -> list[tuple[Family, int]]:
    """(family, core) for each example: round-robin, so every family and core gets its share; shuffled."""
    plan = []
    for index in range(count):
        family = families[index % len(families)]
        plan.append((family, index // len(families) % len(family.cores)))
    rng.shuffle(plan)
    return plan


def example_columns(
    rng: random.Random,
    families: list[Family],
    phrasing: tuple[Phrasings, str],
    pool: Pool,
    count: int,
    flaws: Flaws | None = None,
) -> dict:
    """The columns of a split of `count` conversations (SFT or held-out), each up to its reference answer, worded in
    the phrasings of one role (`phrasing`: the seed's split and the role). With `flaws` (the demonstrations), the
    answer is written as a person would, mistakes included, and a `flaw` column names the mistake."""
    columns = {key: [] for key in ("messages", "family", "check", "template", *(("flaw",) if flaws else ()))}
    for family, core in schedule(rng, families, count):
        template = family.draw(rng, *phrasing, core)
        task = family.make(rng, pool)
        messages = family.render(template, task)
        if flaws:
            flaw, messages = flaws(family, task, messages)
            columns["flaw"].append(flaw)
        columns["messages"].append(messages)
        columns["family"].append(family.name)
        columns["check"].append(json.dumps(task.check))
        columns["template"].append(template.name)
    return columns


def prompt_columns(
    rng: random.Random, families: list[Family], phrasing: tuple[Phrasings, str], pool: Pool, count: int
) -> dict:
    """The columns of `count` prompts (the conversation up to its last user turn) with what checks an answer to them;
    half the tasks of a family with harder cases are harder ones."""
    columns = {"prompt": [], "family": [], "check": [], "template": []}
    for family, core in schedule(rng, families, count):
        template = family.draw(rng, *phrasing, core)
        make = family.harder if family.harder and rng.random() < 0.5 else family.make
        task = make(rng, pool)
        columns["prompt"].append(family.render(template, task)[:-1])
        columns["family"].append(family.name)
        columns["check"].append(json.dumps(task.check))
        columns["template"].append(template.name)
    return columns


def comparison_columns(
    rng: random.Random, families: list[Family], phrasing: tuple[Phrasings, str], pool: Pool, count: int
) -> dict:
    """The columns of `count` comparisons: the reference answer chosen, a broken one (see `reject`) rejected."""
    columns = {key: [] for key in ("prompt", "chosen", "rejected", "family", "broken", "check", "template")}
    for family, core in schedule(rng, families, count):
        template = family.draw(rng, *phrasing, core)
        task = family.make(rng, pool)
        messages = family.render(template, task)
        other = rng.choice([other for other in families if other is not family])
        broken, rejected = reject(rng, task, messages, off_task=other.make(rng, pool).answers[-1])
        columns["prompt"].append(messages[:-1])
        columns["chosen"].append(messages[-1:])
        columns["rejected"].append([{"role": "assistant", "content": rejected}])
        columns["family"].append(family.name)
        columns["broken"].append(broken)
        columns["check"].append(json.dumps(task.check))
        columns["template"].append(template.name)
    return columns


__all__ = [
    "COMPOSITIONS",
    "FAMILIES",
    "HELD_OUT_COMPOSITIONS",
    "SuiteConfig",
    "build_suite",
    "export_suite",
    "leaked_phrasings",
    "recorded_suite",
    "plain_dialogue",
    "split_phrasings",
    "training_texts",
    "verify",
]
