"""The embedded instruction-following suite: determinism, coverage, held-out disjointness, verifiers, export."""

import dataclasses
import json
import random
import re
from collections import defaultdict

import pytest

from hf_instruct.data import load_instruction_dataset, load_preference_dataset, load_text_dataset
from hf_instruct.data.suite import (
    COMPOSITIONS,
    FAMILIES,
    HELD_OUT_COMPOSITIONS,
    SuiteConfig,
    build_suite,
    export_suite,
    verify,
)
from hf_instruct.data.suite.tasks import (
    COMPOSITION_TABLE,
    DEVELOPMENT_FRAMES,
    FAMILY_TABLE,
    HELD_OUT_FRAMES,
    HELD_OUT_PARTS,
    SOURCES,
    TRAINING_FRAMES,
)
from hf_instruct.data.suite.world import CATEGORIES, WORDS, Fact, make_world

MESSAGE_SPLITS = ("sft", "held_out_entities", "held_out_paraphrases", "held_out_compositions")
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
    for split in MESSAGE_SPLITS:
        assert suite[split].column_names == ["messages", "family", "check", "template", "options"]
        assert all(m[-1]["role"] == "assistant" and m[-2]["role"] == "user" for m in suite[split]["messages"])
    assert set(suite["comparisons"].column_names) >= {"prompt", "chosen", "rejected", "family", "broken", "check"}


def test_same_seed_same_suite_other_seed_other_suite(suite):
    again, other = build_suite(SuiteConfig.tiny()), build_suite(SuiteConfig.tiny(seed=1))
    for split in suite:
        assert again[split].to_list() == suite[split].to_list()
        assert other[split].to_list() != suite[split].to_list()


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
    training = json.dumps(suite["sft"].to_list()) + json.dumps(suite["comparisons"].to_list())
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


def test_the_training_grammar_cannot_produce_a_held_out_template():
    for family in FAMILY_TABLE.values():
        training, held = family.grammar(held_out=False), family.grammar(held_out=True)

        def productions(grammar, family=family):
            return {
                family.template(core, prefix, suffix).turns
                for core in grammar.cores
                for prefix in grammar.prefixes
                for suffix in grammar.suffixes
            }

        trained = productions(training)
        assert len(trained) >= 300, family.name  # instruction diversity: hundreds of training templates
        assert productions(held) and not productions(held) & trained, family.name
        held_cores = {family.cores[core] for core in held.cores}
        assert not held_cores & {family.cores[core] for core in training.cores}, family.name
        for turns in trained:  # no held-out core hides inside a training template either
            assert not any(core[0] in turns[0] for core in held_cores), (family.name, turns)


def test_a_development_suite_never_uses_the_reported_held_out_templates():
    development = build_suite(dataclasses.replace(SuiteConfig.tiny(seed=7), development=True))
    reported = {
        family.template(core, prefix, suffix).name
        for family in FAMILY_TABLE.values()
        for grammar in [family.grammar(held_out=True)]
        for core in grammar.cores
        for prefix in grammar.prefixes
        for suffix in grammar.suffixes
    }
    used = {name for split in MESSAGE_SPLITS for name in development[split]["template"]}
    assert used and not used & reported
    trained, held_out = set(development["sft"]["template"]), set(development["held_out_paraphrases"]["template"])
    assert held_out and not held_out & trained
    asked = " ".join(row[0]["content"] for row in development["held_out_paraphrases"]["messages"])
    assert all(frame.split("{ask}")[0] in asked for frame in DEVELOPMENT_FRAMES)  # two stand-ins, as reported


def test_the_corpus_knows_every_request_frame_and_wrapper_part_but_never_asks_an_instruction_in_them():
    """Held-out frames and wrapper parts are language a pretrained model knows ("I'd like to know", "Cheers!"): the
    corpus's notes use every one of them, around news about an entity, never around one of the families' asks."""
    corpus = "\n".join(build_suite(dataclasses.replace(SuiteConfig.tiny(), corpus_mb=1.0))["pretrain"]["text"])
    for frame in (*TRAINING_FRAMES, *HELD_OUT_FRAMES):
        assert frame.split("{ask}")[0] + "the news about" in corpus, frame
    for part in (part for parts in HELD_OUT_PARTS.values() for part in parts):
        assert part in corpus, part
    assert not any(frame.format(ask="the first letter of") in corpus for frame in HELD_OUT_FRAMES)


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


def test_every_fact_asked_about_is_stated_in_the_corpus_in_three_phrasings(suite, corpus):
    facts = {
        tuple(fact)
        for split in (*MESSAGE_SPLITS, "comparisons")
        for check in suite[split]["check"]
        for fact in json.loads(check).get("facts", [])
    }
    assert len(facts) > 100
    for fact in facts:
        stated = [sentence for sentence in Fact(*fact).sentences() if sentence in corpus]
        assert len(stated) >= 3, (fact, stated)


def test_reference_answers_pass_their_checks(suite):
    for split in MESSAGE_SPLITS:
        for messages, check in zip(suite[split]["messages"], suite[split]["check"], strict=True):
            assert verify(check, messages[-1]["content"]), (split, messages, check)


def test_comparisons_chosen_passes_rejected_fails(suite):
    for row in suite["comparisons"]:
        assert verify(row["check"], row["chosen"][0]["content"]), row
        assert not verify(row["check"], row["rejected"][0]["content"]), row
    assert set(suite["comparisons"]["broken"]) == BREAKS


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
    first = json.loads(paths["sft"].read_text(encoding="utf-8").splitlines()[0])
    assert first == suite["sft"][0]
