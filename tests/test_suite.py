"""The embedded instruction-following suite: determinism, coverage, held-out disjointness, verifiers, export."""

import dataclasses
import hashlib
import json
import random
import re
from collections import Counter, defaultdict

import datasets
import pytest

from hf_instruct.data import load_instruction_dataset, load_preference_dataset, load_prompt_dataset, load_text_dataset
from hf_instruct.data.suite import (
    COMPOSITIONS,
    FAMILIES,
    HELD_OUT_COMPOSITIONS,
    SuiteConfig,
    build_suite,
    export_suite,
    leaked_phrasings,
    plain_dialogue,
    split_phrasings,
    training_texts,
    verify,
)
from hf_instruct.data.suite.flaws import KINDS, PREAMBLES, SENTENCES, SIGN_OFFS, profile
from hf_instruct.data.suite.phrasings import FRAMES, WRAPPERS, contains, grams, words
from hf_instruct.data.suite.phrasings import POOL as PHRASINGS
from hf_instruct.data.suite.tasks import COMPOSITION_TABLE, FAMILY_TABLE, HARDER, SOURCES, WRAPPER_KINDS
from hf_instruct.data.suite.world import CATEGORIES, WORDS, Fact, make_world

MESSAGE_SPLITS = ("sft", "held_out_entities", "held_out_paraphrases", "held_out_compositions")
PROMPT_SPLITS = ("comparison_prompts", "rl_prompts")
# sha256 of json.dumps(split.to_list()) before the rl phrasings and the prompt splits were added: unchanged since
HELD_OUT_PARAPHRASES_SHA256 = {
    0: "3b88362a1393c9c969e11fff7c7e4cc22109e34f204959eb218f96daaf38f600",  # SuiteConfig.tiny()
    42: "4414b5adaae1388eaec981bc5e1b7a87c43e6129da2a75f5c502f207675d9ddb",  # SuiteConfig()
}
BREAKS = {"wrong_value", "off_task", "format", "verbose", "refusal", "repeat"}


@pytest.fixture(scope="module")
def suite():
    return build_suite(SuiteConfig.tiny())


@pytest.fixture(scope="module")
def corpus(suite):
    return "\n".join(suite["pretrain"]["text"])


def test_splits_sizes_and_columns(suite):
    config = SuiteConfig.tiny()
    assert 0.2e6 <= len("".join(suite["pretrain"]["text"])) < 0.25e6
    assert len(suite["sft"]) == config.sft_examples and len(suite["comparisons"]) == config.comparisons
    for split in MESSAGE_SPLITS[1:]:
        assert len(suite[split]) == config.held_out_examples
    for split in MESSAGE_SPLITS:  # the demonstrations also say which mistake their writer made, if any
        flaw = ["flaw"] if split == "sft" else []
        assert suite[split].column_names == ["messages", "family", "check", "template", *flaw]
        assert all(m[-1]["role"] == "assistant" and m[-2]["role"] == "user" for m in suite[split]["messages"])
    assert set(suite["comparisons"].column_names) >= {"prompt", "chosen", "rejected", "family", "broken", "check"}
    assert (len(suite["comparison_prompts"]), len(suite["rl_prompts"])) == (60, 60)
    for split in PROMPT_SPLITS:
        assert suite[split].column_names == ["prompt", "family", "check", "template"]
        assert all(p[-1]["role"] == "user" and p[0]["role"] == "user" for p in suite[split]["prompt"])


def sha256(split) -> str:
    return hashlib.sha256(json.dumps(split.to_list()).encode()).hexdigest()


def test_held_out_paraphrases_are_those_of_the_suite_before_the_rl_phrasings(suite):
    """Holding phrasings back for RL changed the demonstrations, not the paraphrases a model is scored on."""
    assert sha256(suite["held_out_paraphrases"]) == HELD_OUT_PARAPHRASES_SHA256[0]


def phrasings_of(template: str) -> list[str]:
    """The frames and wrappers a template name ("family/core:frames.wrappers", indices into the pool) uses."""
    family, ids = template.split("/")[0], [int(i) for i in template.split(":")[1].split(".")]
    kind, turns = FAMILY_TABLE.get(family, COMPOSITION_TABLE.get(family)).kind, len(ids) - len(WRAPPER_KINDS)
    wrappers = [PHRASINGS[kind][i] for kind, i in zip(WRAPPER_KINDS, ids[turns:], strict=True) if i >= 0]
    return [PHRASINGS[kind][i] for i in ids[:turns]] + wrappers


def test_rl_phrasings_are_held_back_from_every_answered_instruction_and_used_by_the_prompt_splits(suite):
    """The demonstrations, the synthetic comparisons, the corpus's question pages and the held-out entity and
    composition splits use only SFT phrasings; the comparison and RL prompts use all training phrasings, the rl ones
    among them (about half their rows); the corpus's notes may use rl phrasings (language, not demonstrations)."""
    phrasings = split_phrasings(0)
    sft, rl = set(phrasings.of("sft")), set(phrasings.of("rl"))
    for split in ("sft", "comparisons", "held_out_entities", "held_out_compositions"):
        assert all(set(phrasings_of(t)) <= sft for t in suite[split]["template"]), split
    pages = [text for text in suite["pretrain"]["text"] if text.startswith("Questions and answers")]
    answered = [m["content"] for messages in suite["sft"]["messages"] for m in messages] + pages
    answered += [m["content"] for column in ("prompt", "chosen") for ms in suite["comparisons"][column] for m in ms]
    assert leaked_phrasings(phrasings, answered, role="rl") == {}
    for split in PROMPT_SPLITS:
        used = [set(phrasings_of(t)) for t in suite[split]["template"]]
        assert all(u <= sft | rl for u in used)
        assert 0.3 < sum(bool(u & rl) for u in used) / len(used) < 0.7, split
        asked = [m["content"] for prompt in suite[split]["prompt"] for m in prompt]
        assert leaked_phrasings(phrasings, asked, role="rl")  # what the check finds where they are


def test_same_seed_same_suite_other_seed_other_suite(suite):
    again, other = build_suite(SuiteConfig.tiny()), build_suite(SuiteConfig.tiny(seed=1))
    for split in suite:
        assert again[split].to_list() == suite[split].to_list()
        assert other[split].to_list() != suite[split].to_list()
    alone = build_suite(SuiteConfig.tiny(), ["held_out_paraphrases"])  # what `hf-instruct evaluate` builds
    assert list(alone) == ["held_out_paraphrases"]
    assert alone["held_out_paraphrases"].to_list() == suite["held_out_paraphrases"].to_list()
    with pytest.raises(ValueError, match=r"unknown splits \['held_out'\]"):
        build_suite(SuiteConfig.tiny(), ["held_out"])


def test_every_family_in_sft_with_at_least_six_templates(suite):
    trained_compositions = set(COMPOSITIONS) - set(HELD_OUT_COMPOSITIONS)
    assert len(FAMILIES) >= 15 and set(suite["sft"]["family"]) == set(FAMILIES) | trained_compositions
    templates = defaultdict(set)
    for family, template in zip(suite["sft"]["family"], suite["sft"]["template"], strict=True):
        templates[family].add(template)
    assert min(len(used) for used in templates.values()) >= 6
    assert any(len(messages) > 2 for messages in suite["sft"]["messages"])  # multi-turn conversations


def test_held_out_entities_only_in_the_corpus(suite, corpus):
    config = SuiteConfig.tiny()
    world = make_world(config.seed, config.num_entities, config.held_out_fraction)
    assert {e.kind for e in world.entities if e.name in world.held_out} == {"person", "town", "animal", "company"}
    training = "".join(json.dumps(suite[split].to_list()) for split in ("sft", "comparisons", *PROMPT_SPLITS))
    for name in world.held_out:
        assert name in corpus
        assert not re.search(rf"\b{re.escape(name)}\b", training), name
    asked = {fact[0] for check in suite["held_out_entities"]["check"] for fact in json.loads(check)["facts"]}
    assert asked and asked <= world.held_out


def test_held_out_paraphrases_use_templates_never_trained_on(suite):
    trained = set(suite["sft"]["template"]) | set(suite["comparisons"]["template"])
    held_out = set(suite["held_out_paraphrases"]["template"])
    assert held_out and not held_out & trained
    assert set(suite["held_out_paraphrases"]["family"]) == set(FAMILIES)
    trained_prompts = {m[0]["content"] for m in suite["sft"]["messages"]}
    assert not trained_prompts & {m[0]["content"] for m in suite["held_out_paraphrases"]["messages"]}


def test_the_grammar_gives_enough_phrasings_to_split_and_every_seed_splits_them_strictly():
    """>= 40 request frames and >= 40 wrappers; per seed, held-out and development phrasings each have a 4-gram no
    training phrasing holds, and none contains a training phrasing or lies inside one ("Could you give me {ask}?"
    holds "Give me {ask}.")."""
    assert len(FRAMES) >= 40 and sum(map(len, WRAPPERS.values())) >= 40
    held_out_by_seed = []
    for seed in (0, 1, 42):
        phrasings = split_phrasings(seed)
        train, dev, held_out = (set(phrasings.of(role)) for role in ("train", "dev", "held_out"))
        assert train and dev and held_out and not (train & dev or train & held_out or dev & held_out)
        assert len(phrasings.roles["sft"]["frames"]) >= 40  # instruction diversity: many frames SFT demonstrates
        sft, rl = set(phrasings.of("sft")), set(phrasings.of("rl"))
        assert rl and sft | rl == train and not sft & rl  # the rl phrasings: training ones, held back from SFT
        assert all(phrasings.distinctive(phrasing, "sft") for phrasing in rl)
        for phrasing in dev | held_out:
            assert phrasings.distinctive(phrasing), phrasing
            assert not any(contains(phrasing, t) or contains(t, phrasing) for t in train), phrasing
        held_out_by_seed.append(held_out)
    assert held_out_by_seed[0] != held_out_by_seed[1] != held_out_by_seed[2]  # each seed draws its own


def test_containment_is_word_level():
    assert contains("Could you give me {ask}?", "Give me {ask}.")
    assert not contains("Could you give me {ask}?", "Could you tell me {ask}?")
    assert grams("I'd like you to tell me {ask}.") == {"i'd like you to", "like you to tell", "you to tell me"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_training_text_holds_a_held_out_or_development_phrasing(seed):
    """Every text a stage reads (corpus with its notes and question pages, demonstrations, comparisons; the RL
    prompts, ptx batches and midtraining mix are made of these) against each held-out phrasing's distinctive
    4-grams."""
    suite = build_suite(SuiteConfig.tiny(seed))
    texts = training_texts(suite)
    assert len(texts) > 1000
    assert leaked_phrasings(split_phrasings(seed), texts) == {}
    assert leaked_phrasings(split_phrasings(seed), texts, role="dev") == {}


@pytest.mark.slow
def test_no_training_text_of_the_default_suite_holds_a_held_out_phrasing():
    """The same on the default pipeline's suite (recipes/default/pipeline.yaml; ~35 s), whose held-out paraphrases
    are those before the rl phrasings were held back from SFT."""
    import yaml
    from conftest import REPO

    recipe = yaml.safe_load((REPO / "recipes/default/pipeline.yaml").read_text())
    config = SuiteConfig(seed=recipe["seed"], **recipe["suite"])
    suite = build_suite(config)
    assert (len(suite["comparison_prompts"]), len(suite["rl_prompts"])) == (2000, 2000)
    assert leaked_phrasings(split_phrasings(config.seed), training_texts(suite)) == {}
    assert sha256(suite["held_out_paraphrases"]) == HELD_OUT_PARAPHRASES_SHA256[config.seed]


def test_the_leakage_check_reports_a_held_out_phrasing_written_into_the_corpus(suite):
    """The check is not vacuous: one held-out frame asked in one note of the corpus is found, with its 4-grams."""
    phrasings = split_phrasings(0)
    frame = next(f for f in phrasings.roles["held_out"]["frames"] if f.count(" ") >= 4)
    texts = training_texts(suite)
    texts[5] += " " + frame.format(ask="the news about the market")
    leaks = leaked_phrasings(phrasings, texts)
    assert list(leaks) == [frame] and set(leaks[frame]) == phrasings.distinctive(frame)
    wrapper = phrasings.roles["held_out"]["greetings"][0]
    assert list(leaked_phrasings(phrasings, [*training_texts(suite), wrapper.upper()])) == [wrapper]


@pytest.mark.parametrize("split", PROMPT_SPLITS)
def test_the_leakage_check_reports_a_held_out_phrasing_written_into_a_prompt_split(suite, split):
    """`training_texts` reads the comparison and RL prompts: a held-out frame asked in one of them is found."""
    phrasings = split_phrasings(0)
    frame = next(f for f in phrasings.roles["held_out"]["frames"] if f.count(" ") >= 4)

    def ask_in_the_held_out_frame(row: dict, index: int) -> dict:
        turn = {"role": "user", "content": frame.format(ask="the first letter of pear")}
        return {**row, "prompt": [turn] if index == 7 else row["prompt"]}

    leaky = datasets.DatasetDict({**suite, split: suite[split].map(ask_in_the_held_out_frame, with_indices=True)})
    assert list(leaked_phrasings(phrasings, training_texts(leaky))) == [frame]


def test_held_out_paraphrases_use_held_out_phrasings_around_training_asks(suite):
    phrasings = split_phrasings(0)
    prompts = [m[0]["content"] for m in suite["held_out_paraphrases"]["messages"]]
    kinds = ("frames", "yes_no")
    held_out = [p for kind in kinds for p in phrasings.roles["held_out"][kind]]
    for prompt in prompts:  # every prompt asks in a held-out frame
        assert any(any(f" {g} " in f" {' '.join(words(prompt))} " for g in grams(p)) for p in held_out), prompt


def test_a_development_suite_never_uses_the_reported_held_out_phrasings():
    """Development scores its own phrasings: no text of a development suite holds a reported held-out phrasing's
    own 4-grams (it may share one with a development phrasing: "I want you to work out" / "I'd like you to work
    out"), and its training texts hold no development phrasing."""
    config = dataclasses.replace(SuiteConfig.tiny(seed=7), development=True)
    development, phrasings = build_suite(config), split_phrasings(7)
    texts = [m["content"] for split in MESSAGE_SPLITS for messages in development[split]["messages"] for m in messages]
    shared = {gram for phrasing in phrasings.of("dev") for gram in grams(phrasing)}
    leaks = leaked_phrasings(phrasings, texts + training_texts(development))
    assert all(set(found) <= shared for found in leaks.values()), leaks
    assert leaked_phrasings(phrasings, training_texts(development), role="dev") == {}
    asked = [m[0]["content"] for m in development["held_out_paraphrases"]["messages"]]
    assert set(leaked_phrasings(phrasings, asked, role="dev")) >= set(phrasings.roles["dev"]["frames"])
    # the same training data as the reported suite: only the held-out splits differ
    reported = build_suite(SuiteConfig.tiny(seed=7))
    assert reported["pretrain"]["text"] == development["pretrain"]["text"]


def test_the_corpus_knows_the_training_phrasings_and_asks_questions_in_plain_text():
    """Training frames and wrappers are language a pretrained model knows: the corpus's notes use them (never a
    held-out one), and its question pages hold questions about training entities in the plain format a base model
    is asked in."""
    config = dataclasses.replace(SuiteConfig.tiny(), corpus_mb=1.0)
    suite, phrasings = build_suite(config), split_phrasings(config.seed)
    corpus = "\n".join(suite["pretrain"]["text"])
    notes = [frame.format(ask="the news about") for frame in phrasings.roles["train"]["frames"]]
    assert sum(note.split("the news about")[0] in corpus for note in notes) >= 0.8 * len(notes)
    pages = [d for d in suite["pretrain"]["text"] if d.startswith("Questions and answers")]
    assert len(pages) > 20 and all("\nQuestion: " in page and "\nAnswer: " in page for page in pages)
    world = make_world(config.seed, config.num_entities, config.held_out_fraction)
    assert not any(re.search(rf"\b{re.escape(name)}\b", "\n".join(pages)) for name in world.held_out)


def test_plain_dialogue_writes_questions_and_answers():
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    assert plain_dialogue(messages) == "Question: What is 2 + 2?\nAnswer: 4\n\nQuestion: And 3 + 3?\nAnswer:"
    assert plain_dialogue(messages[:2]) == "Question: What is 2 + 2?\nAnswer: 4"


def test_compositions_leave_trivial_rules_little():
    """A constant letter count scored 0.36-0.50 on one_word+count_letters with five categories; the first letter
    of the first listed item half of list_item+first_letter with two positions. Wider answer spaces: eleven
    categories drawn by name length (8 lengths), five positions in lists whose first letters differ."""
    suite = build_suite(dataclasses.replace(SuiteConfig.tiny(), held_out_examples=1500))
    rows = defaultdict(list)
    split = suite["held_out_compositions"]
    for family, check in zip(split["family"], split["check"], strict=True):
        rows[family].append(json.loads(check))
    counts = [check["answer"] for check in rows["one_word+count_letters"]]
    assert max(counts.count(n) for n in set(counts)) / len(counts) < 0.16
    for position in (0, -1):  # the first letter of the first (last) listed item: right only at that position
        scored = [verify(check, check["items"][position][0]) for check in rows["list_item+first_letter"]]
        assert sum(scored) / len(scored) < 0.25
    assert all(
        len({item[0] for item in check["items"]}) == len(check["items"]) for check in rows["list_item+first_letter"]
    )


def test_held_out_compositions_combine_families_as_sft_never_does(suite):
    trained = {
        frozenset(FAMILY_TABLE.get(name, COMPOSITION_TABLE.get(name)).parts) for name in set(suite["sft"]["family"])
    }
    assert set(suite["held_out_compositions"]["family"]) == set(HELD_OUT_COMPOSITIONS)
    for name in HELD_OUT_COMPOSITIONS:
        parts = COMPOSITION_TABLE[name].parts
        assert name not in FAMILIES and len(parts) == 2 and set(parts) <= set(FAMILIES)
        assert frozenset(parts) not in trained


@pytest.mark.parametrize("development", [False, True])
def test_each_held_out_compositions_parts_are_trained_with_other_partners(development):
    """The Latin-square split: a held-out source+operation pair is unseen, yet SFT composes its source with another
    operation and its operation with another source. Development trains as many pairs and never scores a reported
    one."""
    config = dataclasses.replace(SuiteConfig.tiny(seed=3), development=development)
    suite = build_suite(config)
    trained = {name for name in set(suite["sft"]["family"]) if "+" in name}
    held_out = set(suite["held_out_compositions"]["family"])
    assert trained and held_out and not trained & held_out
    for name in held_out:
        source, operation = name.split("+")
        assert any(t.startswith(f"{source}+") for t in trained) and any(t.endswith(f"+{operation}") for t in trained)
    assert trained | held_out == set(COMPOSITIONS) and len(trained) == 6
    assert not held_out & set(HELD_OUT_COMPOSITIONS) if development else held_out == set(HELD_OUT_COMPOSITIONS)


def test_every_word_a_composition_transforms_is_one_the_word_families_spell():
    """A BPE model knows a word's letters only from text that spells them. one_word's answers (the category names)
    were spelled nowhere, so `one_word+count_letters` asked for a letter count no training text stated: 0.00 on
    every seed."""
    rng, pool = random.Random(0), make_world(seed=0, num_entities=40, held_out_fraction=0.2).pool()
    for source, (_, find) in SOURCES.items():
        found = {find(rng, pool)[1] for _ in range(300)}
        assert found <= set(WORDS), (source, found - set(WORDS))
    assert set(CATEGORIES) <= set(WORDS)


def checks(split: datasets.Dataset, family: str) -> list[dict]:
    return [json.loads(check) for name, check in zip(split["family"], split["check"], strict=True) if name == family]


def test_the_prompt_splits_ask_trained_families_and_pairs_and_harder_cases():
    """Over every trained family and composition, never a held-out pair; half the tasks of a family with harder
    cases are harder ones, which the demonstrations show rarely (the longest words: 13 % of letter counts) or never
    (longer lists, more bullet points)."""
    config = dataclasses.replace(SuiteConfig.tiny(seed=3), comparison_prompts=400, rl_prompts=1500)
    suite = build_suite(config, ["sft", *PROMPT_SPLITS])
    for split in PROMPT_SPLITS:
        assert set(suite[split]["family"]) == set(suite["sft"]["family"])
        assert not set(suite[split]["family"]) & set(HELD_OUT_COMPOSITIONS)
    harder = {  # how big a task is, from its check, and from what size on it is a harder case
        "count_letters": (lambda check: len(check["word"]), 7),
        "min_max": (lambda check: len(check["items"]), 6),
        "list_item": (lambda check: len(check["items"]), 7),
        "count_items": (lambda check: check["answer"], 8),
        "bullet_list": (lambda check: check["count"], 5),
    }
    assert set(harder) == set(HARDER)
    for family, (size, hard) in harder.items():
        share = {
            split: sum(size(check) >= hard for check in checks(suite[split], family))
            / len(checks(suite[split], family))
            for split in ("sft", "rl_prompts")
        }
        assert share["sft"] < (0.2 if family == "count_letters" else 0.01) and 0.4 < share["rl_prompts"] < 0.75, share


def test_every_fact_asked_about_is_stated_in_the_corpus_in_three_phrasings(suite, corpus):
    facts = {
        tuple(fact)
        for split in (*MESSAGE_SPLITS, *PROMPT_SPLITS, "comparisons")
        for check in suite[split]["check"]
        for fact in json.loads(check).get("facts", [])
    }
    assert len(facts) > 100
    for fact in facts:
        stated = [sentence for sentence in Fact(*fact).sentences() if sentence in corpus]
        assert len(stated) >= 3, (fact, stated)


def test_reference_answers_pass_their_checks(suite):
    """Every reference answer of a held-out split, and every demonstration its writer got right (see below)."""
    for split in MESSAGE_SPLITS:
        rows = suite[split].filter(lambda row: not row.get("flaw"))
        assert len(rows) > 0.7 * len(suite[split])
        for messages, check in zip(rows["messages"], rows["check"], strict=True):
            assert verify(check, messages[-1]["content"]), (split, messages, check)


def test_comparisons_chosen_passes_rejected_fails(suite):
    for row in suite["comparisons"]:
        assert verify(row["check"], row["chosen"][0]["content"]), row
        assert not verify(row["check"], row["rejected"][0]["content"]), row
    assert set(suite["comparisons"]["broken"]) == BREAKS


# ---------------------------------------------------------------- demonstrations as people write them

COLUMNS = ["messages", "family", "check", "template"]  # the demonstrations' columns before they had flaws
# sha256 of json.dumps(build_suite(SuiteConfig.tiny(seed=3), ["sft"])["sft"].to_list()), computed at bc1fe84 (the
# rl phrasings held back from the demonstrations), before demonstrations had flaws
PERFECT_TINY_3 = "be3a5e22239140e1ea3e176cdb682710dae7612a48356b1c5a448e3369082d34"


@pytest.fixture(scope="module")
def demonstrations():
    """Scale -> 4200 demonstrations of the tiny suite (200 per trained family)."""
    config = dataclasses.replace(SuiteConfig.tiny(), sft_examples=4200)
    return {
        scale: build_suite(dataclasses.replace(config, demonstration_flaws=scale), ["sft"])["sft"]
        for scale in (0, 1, 2)
    }


def test_flaw_scale_zero_is_the_perfect_suite_built_before_flaws():
    sft = build_suite(dataclasses.replace(SuiteConfig.tiny(seed=3), demonstration_flaws=0), ["sft"])["sft"]
    assert hashlib.sha256(json.dumps(sft.select_columns(COLUMNS).to_list()).encode()).hexdigest() == PERFECT_TINY_3
    assert set(sft["flaw"]) == {""}


def test_flaws_change_only_the_demonstrations_answers(suite):
    """The flaws draw from their own random stream: at any scale the same prompts, tasks and templates, and every
    other split (comparisons, held-out splits, corpus) byte for byte the same."""
    perfect = build_suite(dataclasses.replace(SuiteConfig.tiny(), demonstration_flaws=0))
    doubled = build_suite(dataclasses.replace(SuiteConfig.tiny(), demonstration_flaws=2), ["sft"])["sft"]
    for split in set(suite) - {"sft"}:
        assert perfect[split].to_list() == suite[split].to_list(), split
    for sft in (suite["sft"], doubled):
        for column in ("family", "check", "template"):
            assert sft[column] == perfect["sft"][column]
        assert [m[:-1] for m in sft["messages"]] == [m[:-1] for m in perfect["sft"]["messages"]]
        changed = [a[-1] != b[-1] for a, b in zip(sft["messages"], perfect["sft"]["messages"], strict=True)]
        assert changed == [flaw != "" for flaw in sft["flaw"]] and any(changed)
    assert doubled["flaw"].count("") < suite["sft"]["flaw"].count("")


@pytest.mark.parametrize("scale", [1, 2])
def test_flaw_rates_follow_the_profile_per_family_and_kind(demonstrations, scale):
    """Within 4 binomial standard deviations (and one row) of the profile, for each family and kind and for each kind
    over all families; families differ (people count worse than they recall a fact they read)."""
    sft, rates = demonstrations[scale], profile(scale)
    rows = Counter(sft["family"])
    found = Counter(zip(sft["family"], sft["flaw"], strict=True))
    for family, n in rows.items():
        for kind in KINDS:
            expected = rates[family][kind]
            assert abs(found[family, kind] / n - expected) <= 4 * (expected * (1 - expected) / n) ** 0.5 + 1 / n, (
                family,
                kind,
                found[family, kind] / n,
                expected,
            )
    for kind in KINDS:
        expected = sum(rates[family][kind] * n for family, n in rows.items()) / len(sft)
        measured = sft["flaw"].count(kind) / len(sft)
        assert abs(measured - expected) <= 4 * (expected * (1 - expected) / len(sft)) ** 0.5, (kind, measured)
    assert {kind: rates["count_letters"][kind] for kind in KINDS} == {
        "miscount": 0.12 * scale,
        "chatty": 0.06 * scale,
        "format": 0.03 * scale,
        "wrong_value": 0,
    }
    totals = {family: sum(rates[family].values()) for family in rows}
    assert max(totals.values()) > 1.8 * min(totals.values())
    flawed = sum(totals[family] * n for family, n in rows.items()) / len(sft)  # the profile's share, not a draw's
    assert 0.15 * scale <= flawed <= 0.25 * scale


def test_a_flawed_demonstration_fails_its_check_and_a_clean_one_passes(demonstrations):
    for scale, sft in demonstrations.items():
        for messages, check, flaw in zip(sft["messages"], sft["check"], sft["flaw"], strict=True):
            assert verify(check, messages[-1]["content"]) is (flaw == ""), (scale, flaw, messages[-1], check)
    assert set(demonstrations[0]["flaw"]) == {""} and set(demonstrations[1]["flaw"]) == {"", *KINDS}


def test_the_profile_scales_and_caps_at_one():
    assert all(rate == 0 for kinds in profile(0).values() for rate in kinds.values())
    assert profile(2)["uppercase"]["format"] == pytest.approx(2 * profile(1)["uppercase"]["format"])
    # a composition fails when either step does: list_item miscounts 6 %, count_letters 12 %
    assert profile(1)["list_item+count_letters"]["miscount"] == pytest.approx(1 - 0.94 * 0.88)
    for kinds in profile(100).values():
        assert sum(kinds.values()) == pytest.approx(1) and all(0 <= rate <= 1 for rate in kinds.values())


@pytest.mark.parametrize("bad", [-0.5, float("nan"), "1"])
def test_a_bad_flaw_scale_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=r"SuiteConfig.demonstration_flaws must be a number >= 0"):
        SuiteConfig(demonstration_flaws=bad)


def test_flawed_answers_hold_no_phrasing_of_the_pool(demonstrations):
    """Chatter and sentences are fixed phrases outside the phrasing pool: no 4-gram of a flawed answer is one of a
    phrasing, so no held-out phrasing can leak through them (the leakage tests above run on flawed suites too)."""
    pool_grams = {gram for phrasings in PHRASINGS.values() for phrasing in phrasings for gram in grams(phrasing)}
    answers = [m[-1]["content"] for m in demonstrations[2]["messages"]]
    assert len(answers) > 1000
    for text in (*PREAMBLES, *SIGN_OFFS, *SENTENCES, *answers):
        assert not grams(text.replace("{}", "x")) & pool_grams, text


EXACT = {"kind": "exact", "answer": "Tovik Bay"}
UPPER = {"kind": "exact", "answer": "PLUMS", "case": True}
NUMBER = {"kind": "number", "answer": 42}
ONE_WORD = {"kind": "one_word", "answers": ["colour", "color"]}
YES = {"kind": "yes_no", "answer": "yes"}
JSON = {"kind": "json", "answer": {"name": "Bo Kin", "age": 3}}
BULLETS = {"kind": "list", "style": "bullet", "items": ["pear", "fig"], "ordered": True}
COMMAS = {"kind": "list", "style": "comma", "items": ["pear", "fig"], "ordered": False}
ANY = {"kind": "list", "style": "any", "items": ["pear", "fig"], "ordered": True}
POOL = {"kind": "list", "style": "bullet", "count": 2, "pool": ["pear", "fig", "plum"]}


@pytest.mark.parametrize(
    ("check", "response", "expected"),
    [
        (EXACT, "Tovik Bay", True),
        (EXACT, "  tovik   bay. ", True),
        (EXACT, '"Tovik Bay"', True),
        (EXACT, "It is Tovik Bay.", False),
        (EXACT, "Tovik", False),
        (UPPER, "PLUMS.", True),
        (UPPER, "Plums", False),
        (NUMBER, "42", True),
        (NUMBER, "42.", True),
        (NUMBER, " 42.0\n", True),
        (NUMBER, "43", False),
        (NUMBER, "The answer is 42.", False),
        (NUMBER, "forty-two", False),
        (ONE_WORD, "Colour", True),
        (ONE_WORD, "color.", True),
        (ONE_WORD, "It is a colour.", False),
        (ONE_WORD, "fruit", False),
        (YES, "Yes.", True),
        (YES, "yes", True),
        (YES, "No", False),
        (YES, "True.", False),
        (YES, "Yes, it is.", False),
        (JSON, '{"name": "Bo Kin", "age": 3}', True),
        (JSON, '{"age": 3, "name": "bo kin"}', True),
        (JSON, '```json\n{"name": "Bo Kin", "age": 3}\n```', True),
        (JSON, '{"name": "Bo Kin", "age": 3, "job": "baker"}', False),
        (JSON, '{"name": "Bo Kin"}', False),
        (JSON, '{"name": "Bo Kin", "age": "3"}', False),
        (JSON, '{"name": "Bo Kin", "age": 4}', False),
        (JSON, 'Here you go: {"name": "Bo Kin", "age": 3}', False),
        (JSON, "The name is Bo Kin, the age is 3.", False),
        (JSON, '[{"name": "Bo Kin", "age": 3}]', False),
        (BULLETS, "- pear\n- fig", True),
        (BULLETS, "* Pear\n\n* fig.", True),
        (BULLETS, "- fig\n- pear", False),
        (BULLETS, "pear, fig", False),
        (BULLETS, "Sure:\n- pear\n- fig", False),
        (COMMAS, "fig, pear", True),
        (COMMAS, "pear, fig, fig", False),
        (COMMAS, "- pear\n- fig", False),
        (ANY, "pear, fig", True),
        (ANY, "- pear\n- fig", True),
        (ANY, "fig, pear", False),
        (POOL, "- plum\n- pear", True),
        (POOL, "- plum\n- plum", False),
        (POOL, "- plum\n- apple", False),
        (POOL, "- plum\n- pear\n- fig", False),
    ],
)
def test_verify(check, response, expected):
    assert verify(check, response) is expected
    assert verify(json.dumps(check), response) is expected


def test_verify_rejects_unknown_check_kinds():
    with pytest.raises(ValueError, match="unknown check kind"):
        verify({"kind": "regex", "answer": "x"}, "x")


def test_export_reads_back_with_the_package_loaders(suite, tmp_path):
    paths = export_suite(suite, tmp_path / "suite")
    assert set(paths) == set(suite) and all(path.suffix == ".jsonl" for path in paths.values())
    for split in MESSAGE_SPLITS:
        assert len(load_instruction_dataset(paths[split])) == len(suite[split])
    assert len(load_preference_dataset(paths["comparisons"])) == len(suite["comparisons"])
    assert len(load_text_dataset(paths["pretrain"])) == len(suite["pretrain"])
    for split in PROMPT_SPLITS:  # the RL stages read their `prompt` column
        assert load_prompt_dataset(paths[split])["prompt"] == suite[split]["prompt"]
    first = json.loads(paths["sft"].read_text(encoding="utf-8").splitlines()[0])
    assert first == suite["sft"][0]


def test_the_docs_table_is_the_default_profile():
    """docs/data.md's table of default rates says what `profile(1)` does, for every family it names alone."""
    from conftest import REPO

    rates, rows = profile(1), {}
    for line in (REPO / "docs/data.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in rates:
            rows[cells[0]] = [0.0 if cell == "–" else float(cell) / 100 for cell in cells[1:]]
    assert set(rows) == set(rates) - set(HELD_OUT_COMPOSITIONS)
    for family, written in rows.items():
        expected = [rates[family][kind] for kind in KINDS]
        assert written == pytest.approx([*expected, sum(expected)], abs=6e-4), family
