"""Midtraining and packing that keeps documents apart: what the batches contain, and what the model sees."""

import dataclasses
import os
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import SMOKE_TRAINING, tiny_config

from hf_instruct import DataCollatorForInstructionTuning, InstructGPTForCausalLM
from hf_instruct.allocator import USER_SETTINGS, keep_freed_memory
from hf_instruct.data import pack_texts
from hf_instruct.data.mixing import pack_mixture
from hf_instruct.data.text import IGNORE_INDEX, collate_blocks
from hf_instruct.precision import (
    GIVE_UP,
    PASS_FLOP,
    PROBE_SPEEDUP,
    PrecisionChoice,
    ProbeResult,
    ProbeShapes,
    decide_bf16,
    probe_model,
    probe_speeds,
    training_pass,
)
from hf_instruct.stages import PretrainStageConfig, SFTStageConfig, run_pretrain
from hf_instruct.stages.lifecycle import probe_shapes

DOCS = ["alpha beta gamma delta", "the lazy dog sleeps", "a model learns what the labels say", "one two three"]
CONVERSATIONS = [
    [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]
    for word in ("alpha", "beta", "gamma", "dog", "model")
]


def test_documents_apart_restart_positions_and_never_predict_across(tokenizer):
    docs = datasets.Dataset.from_dict({"text": DOCS * 3})
    with pytest.warns(UserWarning, match="do not fill"):
        blocks = pack_texts(docs, tokenizer, block_size=16, keep_documents_apart=True)
        plain = pack_texts(docs, tokenizer, block_size=16)
    assert blocks["input_ids"] == plain["input_ids"]  # the same tokens, only positions and labels differ
    eos = tokenizer.eos_token_id
    for ids, positions, labels in zip(blocks["input_ids"], blocks["position_ids"], blocks["labels"], strict=True):
        assert positions[0] == 0 and labels[0] == IGNORE_INDEX
        for i in range(1, 16):
            restarts = ids[i - 1] == eos
            assert positions[i] == (0 if restarts else positions[i - 1] + 1)
            assert labels[i] == (IGNORE_INDEX if restarts else ids[i])


def test_a_packed_block_computes_each_document_as_if_alone(tokenizer):
    torch.manual_seed(0)
    model = InstructGPTForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval()
    docs = datasets.Dataset.from_dict({"text": DOCS})
    with pytest.warns(UserWarning, match="do not fill"):
        (block,) = pack_texts(docs, tokenizer, block_size=24, keep_documents_apart=True).select(range(1))
    batch = collate_blocks([block])
    assert batch["use_cache"] is False and "attention_mask" not in batch
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [24]
    for start, end in zip(starts, starts[1:], strict=False):
        alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
        torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-4)


def test_mixture_holds_the_instruction_share_and_trains_only_answers(tokenizer):
    texts = datasets.Dataset.from_dict({"text": [f"{doc} {i}" for i in range(40) for doc in DOCS]})
    collator = DataCollatorForInstructionTuning(tokenizer)
    rendered = {tuple(ids): labels for ids, labels in (collator.tokenize({"messages": m}) for m in CONVERSATIONS)}
    assert all(IGNORE_INDEX in labels and set(labels) != {IGNORE_INDEX} for labels in rendered.values())
    for share in (0.2, 0.5):
        with pytest.warns(UserWarning, match="do not fill"):
            blocks = pack_mixture(texts, CONVERSATIONS, tokenizer, 32, share=share, seed=0)
        assert all(len(ids) == 32 for ids in blocks["input_ids"])  # full blocks: conversations packed, never padded
        assert "attention_mask" not in blocks.column_names and tokenizer.pad_token_id not in sum(
            blocks["input_ids"], []
        )
        stream = [token for ids in blocks["input_ids"] for token in ids]
        labels = [label for ids in blocks["labels"] for label in ids]
        eos, instruction_tokens, start = tokenizer.eos_token_id, 0, 0
        while eos in stream[start:]:  # walk the documents of the stream and recognise the rendered conversations
            end = stream.index(eos, start)
            if tuple(stream[start:end]) in rendered:
                instruction_tokens += end - start + 1
                expected = rendered[tuple(stream[start:end])]  # assistant tokens only, none at a block's start
                expected = [IGNORE_INDEX if k == 0 or (start + k) % 32 == 0 else x for k, x in enumerate(expected)]
                assert labels[start:end] == expected
            start = end + 1
        assert instruction_tokens / len(stream) == pytest.approx(share, abs=0.03)


def test_mixture_refuses_a_share_without_instructions(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="needs --instruction_files"):
        PretrainStageConfig(output_dir=str(tmp_path), train_files=["x.txt"], instruction_share=0.3)
    with pytest.raises(ValueError, match="below 1"):
        PretrainStageConfig(
            output_dir=str(tmp_path), train_files=["x.txt"], instruction_files=["i"], instruction_share=1
        )


def test_midtraining_stage_continues_a_model_on_the_mixture(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{doc} {i}"}}\n' for i in range(30) for doc in DOCS))
    instructions = tmp_path / "sft.jsonl"
    words = ("a", "b", "c") * 10
    instructions.write_text("".join(f'{{"instruction": "Please repeat {w}.", "output": "{w}"}}\n' for w in words))
    common = dict(SMOKE_TRAINING, train_files=[str(corpus)], instruction_files=[str(instructions)], block_size=32)
    base = run_pretrain(
        PretrainStageConfig(
            output_dir=str(tmp_path / "base"),
            vocab_size=400,
            eval_blocks=2,
            model_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            **common,
        )
    )
    midtrained = run_pretrain(
        PretrainStageConfig(
            output_dir=str(tmp_path / "mid"), model_name_or_path=base, eval_blocks=2, instruction_share=0.3, **common
        )
    )
    from transformers import AutoTokenizer

    from hf_instruct.model_card import read_history

    tokenizer = AutoTokenizer.from_pretrained(midtrained)
    assert tokenizer.tokenize(" repeat") == ["Ġrepeat"]  # the base's tokenizer learnt the instructions' words too
    base_record, mid_record = read_history(midtrained)
    assert base_record["hyperparameters"]["instruction_share"] == 0
    assert mid_record["hyperparameters"]["instruction_share"] == 0.3 and mid_record["base_model"] == base


@pytest.mark.parametrize(
    ("kwargs", "bf16", "reason"),
    [
        (dict(cuda=True, cuda_bf16=True), True, "GPU with bf16"),
        (dict(cuda=True, cuda_bf16=False), False, "GPU without bf16"),
        (dict(cuda=False), False, "CPU, not probed"),
        (
            dict(cuda=False, probe=ProbeResult(fp32=10_000.0, bf16=PROBE_SPEEDUP * 10_000.0, seconds=0.8)),
            True,
            "CPU; a 0.8 s training probe found bf16 faster: 12.0 k tokens/s against 10.0 k in fp32 (1.20x, bf16 "
            "needs 1.2x)",
        ),
        (  # AMX, yet no faster at this model's shapes
            dict(cuda=False, probe=ProbeResult(fp32=24_000.0, bf16=26_000.0, seconds=0.6)),
            False,
            "found bf16 not faster: 26.0 k tokens/s against 24.0 k in fp32 (1.08x",
        ),
        (  # emulated bf16 (AVX2 only)
            dict(cuda=False, probe=ProbeResult(fp32=12_000.0, bf16=1_000.0, seconds=1.4)),
            False,
            "1.0 k tokens/s against 12.0 k in fp32 (0.08x",
        ),
    ],
)
def test_bf16_only_where_it_is_fast(kwargs, bf16, reason):
    choice = decide_bf16(**kwargs)
    assert choice.bf16 is bf16 and reason in choice.reason


def test_the_decision_follows_the_fastest_pass_of_each_precision_and_emulated_bf16_ends_the_probe():
    """`run_pass` stands in for a model's timed training pass: it returns the seconds given for each precision."""
    shapes = ProbeShapes(hidden_size=64, intermediate_size=192, batch_size=8, sequence_length=64)  # 512 tokens

    def timings(fp32: list[float], bf16: list[float]):
        calls, left = [], {False: iter(fp32), True: iter(bf16)}

        def run_pass(bf16: bool) -> float:
            calls.append("bf16" if bf16 else "fp32")
            return next(left[bf16])

        return calls, run_pass

    # warm-ups first, then alternating; a stall (0.9 s) does not count, the fastest pass does
    calls, run_pass = timings([0.3, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1], [0.5, 0.08, 0.9, 0.05, 0.06, 0.07])
    result = probe_speeds(shapes, run_pass)
    assert calls == ["fp32", "fp32", "bf16", *["bf16", "fp32"] * 5]
    assert (result.fp32, result.bf16) == (pytest.approx(512 / 0.1), pytest.approx(512 / 0.05)) and result.seconds > 0
    assert decide_bf16(cuda=False, probe=result).bf16 is True  # 2x
    calls, run_pass = timings([0.3, 0.1, *[0.1] * 5], [0.5, *[0.1 / 1.15] * 5])  # faster, not by PROBE_SPEEDUP
    assert decide_bf16(cuda=False, probe=probe_speeds(shapes, run_pass)).bf16 is False
    calls, run_pass = timings([0.3, 0.1], [GIVE_UP * 0.1 + 0.01])  # emulated: its warm-up is measured alone
    result = probe_speeds(shapes, run_pass)
    assert calls == ["fp32", "fp32", "bf16"] and result.bf16 == pytest.approx(512 / 1.01)


def test_the_probe_trains_a_model_of_the_given_shapes_and_leaves_the_rng_alone():
    shapes = ProbeShapes(
        hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=128, batch_size=3, sequence_length=24,
    )  # fmt: skip
    model, batch = probe_model(shapes)
    assert batch.shape == (3, 24) and int(batch.max()) < 128
    layer = model.model.layers[0]
    assert len(model.model.layers) == 1 and model.lm_head.weight.shape == (128, 32)
    assert layer.mlp.up_proj.weight.shape == (96, 32) and layer.self_attn.k_proj.weight.shape == (16, 32)
    run_pass = training_pass(model, batch)
    assert run_pass(False) > 0 and run_pass(True) > 0
    state = torch.random.get_rng_state()
    result = probe_speeds(shapes)
    assert result.fp32 > 0 and result.bf16 > 0 and 0 < result.seconds < 10
    assert torch.equal(torch.random.get_rng_state(), state)  # a stage's seeded draws are those it had without it


def test_a_large_models_probe_trains_fewer_rows_of_the_same_matrices():
    default = ProbeShapes()
    assert default.within_budget() == default  # the default model trains its whole batch (8 GFLOP a pass)
    assert default.flop_per_token() == 6 * (2 * (2 * 128 * (128 + 2 * 32) + 3 * 128 * 384) + 2048 * 128)
    wide = ProbeShapes(256, 768, 4, 8, 4, 8192, batch_size=16, sequence_length=256)
    assert wide.within_budget() == dataclasses.replace(wide, batch_size=1)
    assert 256 * wide.flop_per_token() <= PASS_FLOP < 2 * 256 * wide.flop_per_token()
    gpt3_small = ProbeShapes(768, 3072, 12, 12, 12, 49152, batch_size=32, sequence_length=1024)
    assert gpt3_small.within_budget() == dataclasses.replace(
        gpt3_small, batch_size=1, sequence_length=128, num_hidden_layers=1
    )  # the LM head alone is 226 MFLOP a token: one layer beside it
    deep = ProbeShapes(512, 1536, 24, 8, 8, 2048, batch_size=8, sequence_length=512)
    assert deep.within_budget() == dataclasses.replace(deep, batch_size=1, sequence_length=128, num_hidden_layers=3)
    assert deep.flop_per_token(3) * 128 <= PASS_FLOP < deep.flop_per_token(4) * 128


def test_a_stage_probes_its_own_model_and_batch(tmp_path):
    model_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    new = PretrainStageConfig(
        output_dir=str(tmp_path / "new"), train_files=["t.txt"], vocab_size=300, block_size=16,
        model_config=model_config, **SMOKE_TRAINING,
    )  # fmt: skip
    shapes = ProbeShapes(32, 64, 1, 2, 2, 300, SMOKE_TRAINING["per_device_train_batch_size"], 16)
    assert probe_shapes(new) == shapes
    tiny_config(**model_config, vocab_size=300).save_pretrained(tmp_path / "model")
    tuned = SFTStageConfig(
        output_dir=str(tmp_path / "sft"), model_name_or_path=str(tmp_path / "model"), train_files=["t.jsonl"],
        max_length=48, **SMOKE_TRAINING,
    )  # fmt: skip
    assert probe_shapes(tuned) == dataclasses.replace(shapes, sequence_length=48)
    tuned.model_name_or_path = str(tmp_path / "not trained yet")  # not on disk, as a Hub id
    assert probe_shapes(tuned) == ProbeShapes()  # the default model and batch, probed once for all such stages


@pytest.mark.parametrize(("value", "bf16"), [("1", True), ("on", True), ("0", False), ("False", False)])
def test_hf_instruct_bf16_forces_the_choice_either_way(monkeypatch, value, bf16):
    """The switch that runs the test suite as on the other kind of CPU: it wins over the instructions and the probe."""
    from hf_instruct.precision import default_bf16

    monkeypatch.setenv("HF_INSTRUCT_BF16", value)
    default_bf16.cache_clear()
    try:
        assert default_bf16() == PrecisionChoice(bf16, f"forced {'on' if bf16 else 'off'} by HF_INSTRUCT_BF16")
        monkeypatch.setenv("HF_INSTRUCT_BF16", "fast")
        default_bf16.cache_clear()
        with pytest.raises(ValueError, match="HF_INSTRUCT_BF16='fast' is not valid: expected 1 or 0"):
            default_bf16()
    finally:
        monkeypatch.undo()
        default_bf16.cache_clear()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU probe")
def test_unforced_a_cpu_decides_by_the_probe_at_the_shapes_once(monkeypatch):
    from hf_instruct.precision import default_bf16, probe

    monkeypatch.delenv("HF_INSTRUCT_BF16", raising=False)
    shapes = ProbeShapes(32, 64, 1, 2, 2, 128, 2, 16)
    default_bf16.cache_clear()
    try:
        choice = default_bf16(shapes)
        assert choice == decide_bf16(cuda=False, probe=probe(shapes))  # the probe of these shapes, run once
        assert choice.reason.startswith("CPU; a ") and default_bf16(shapes) is choice
    finally:
        default_bf16.cache_clear()


def test_a_bf16_the_machine_chose_is_no_setting_of_the_run_but_one_the_config_set_is(tmp_path):
    """A probe near its threshold may choose otherwise next time: that must not make a finished run stale."""
    from hf_instruct.staleness import run_settings

    common = dict(output_dir=str(tmp_path), train_files=["t.txt"], **{**SMOKE_TRAINING, "bf16": None})
    chosen = PretrainStageConfig(**common)
    assert chosen.bf16_reason != "set in the config" and "bf16" not in run_settings(chosen)
    for bf16 in (True, False):
        assert run_settings(PretrainStageConfig(**{**common, "bf16": bf16})).get("bf16", False) is bf16


def test_the_bf16_choice_its_reason_and_the_allocator_are_recorded(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(DOCS * 20))
    config = PretrainStageConfig(
        output_dir=str(tmp_path / "run"),
        train_files=[str(corpus)],
        vocab_size=300,
        block_size=16,
        eval_blocks=0,
        model_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        **dict(SMOKE_TRAINING, bf16=None, max_steps=1),
    )
    out = run_pretrain(config)
    from hf_instruct.model_card import read_history
    from hf_instruct.precision import default_bf16

    recorded = read_history(out)[-1]["hyperparameters"]
    choice = default_bf16(probe_shapes(config))  # chosen for this model and batch
    assert recorded["bf16"] is choice.bf16 and recorded["bf16_reason"] == choice.reason
    assert recorded["allocator"] == keep_freed_memory()  # on Linux with glibc: the thresholds it set


STEP_OF_FREED_BUFFERS = """
import resource, sys, torch
from hf_instruct.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
step = lambda: [torch.ones(4_000_000) for _ in range(4)]  # a step's four 16 MB buffers, freed when it ends
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_stops_a_step_from_mapping_its_buffers_again():
    """Each run in a fresh process: the setting is process-wide and cannot be undone."""
    import resource  # Unix only

    def page_faults(mode):
        env = {name: value for name, value in os.environ.items() if name not in USER_SETTINGS}  # glibc's defaults
        if mode == "default":  # glibc's static threshold: its dynamic one sometimes rises past 16 MB during imports
            env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # (1 run in 4 here), and the test read 19 k faults
        command = [sys.executable, "-c", STEP_OF_FREED_BUFFERS, mode]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    pages_per_step = 4 * 16 * 2**20 // resource.getpagesize()
    assert page_faults("default") > 10 * pages_per_step  # glibc trims the freed heap and maps it again
    assert page_faults("keep") < pages_per_step  # the memory stays: at most stray pages fault


def test_keep_freed_memory_leaves_an_allocator_the_user_chose(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert keep_freed_memory() == "left as the environment sets it (MALLOC_TRIM_THRESHOLD_)"
