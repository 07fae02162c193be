"""DataCollatorForInstructionTuning: exact labels, truncation, padded and padding-free batches, stock trainers."""

import copy
import logging

import pytest
import torch
from conftest import SMOKE_TRAINING, logged_losses, tiny_config, tiny_llama_config
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close
from transformers import LlamaForCausalLM, Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from hf_instruct import DataCollatorForInstructionTuning, InstructGPTForCausalLM
from hf_instruct.data import BadRecordError, to_messages

X = -100  # ignored label


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def turn(tokenizer, role: str, content: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one rendered chat turn: only an assistant's content and <|im_end|> are trained."""
    if role != "assistant":
        tokens = ids(tokenizer, f"<|im_start|>{role}\n {content}<|im_end|>\n")
        return tokens, [X] * len(tokens)
    header, answer, newline = (ids(tokenizer, t) for t in ("<|im_start|>assistant\n", f" {content}<|im_end|>", "\n"))
    return header + answer + newline, [X] * len(header) + answer + [X] * len(newline)


def conversation(tokenizer, *turns: tuple[str, str]) -> tuple[list[int], list[int]]:
    input_ids, labels = [], []
    for role, content in turns:
        turn_ids, turn_labels = turn(tokenizer, role, content)
        input_ids += turn_ids
        labels += turn_labels
    messages = [{"role": role, "content": content} for role, content in turns]
    assert input_ids == tokenizer.apply_chat_template(messages)["input_ids"]  # the pieces render like the template
    return input_ids, labels


def padded(rows: list[tuple[list[int], list[int]]], length: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([i + [0] * (length - len(i)) for i, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i, _ in rows]),
        "labels": torch.tensor([lbl + [X] * (length - len(lbl)) for _, lbl in rows]),
    }


def assert_batch_equal(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert_close(actual[key], value, rtol=0, atol=0, msg=key)
        else:
            assert actual[key] == value, key


ALPACA = {"instruction": "Say hi", "input": "", "output": "Hi!"}
MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "Reynard."},
        {"role": "user", "content": "And a dog?"},
        {"role": "assistant", "content": "Rex."},
    ]
}


# ---------------------------------------------------------------- exact labels


def test_single_turn_and_multi_turn_with_system_prompt_padded(tokenizer):
    single = conversation(tokenizer, ("user", "Say hi"), ("assistant", "Hi!"))
    multi = conversation(
        tokenizer,
        ("system", "Be brief."),
        ("user", "Name a fox."),
        ("assistant", "Reynard."),
        ("user", "And a dog?"),
        ("assistant", "Rex."),
    )
    batch = DataCollatorForInstructionTuning(tokenizer)([ALPACA, MULTI_TURN])
    assert_batch_equal(batch, padded([single, multi], len(multi[0])))
    trained = batch["labels"][1][batch["labels"][1] != X].tolist()
    assert tokenizer.decode(trained) == " Reynard.<|im_end|> Rex.<|im_end|>"  # every turn ends with its trained EOT


def test_empty_and_missing_input_fields_render_the_same(tokenizer):
    collator = DataCollatorForInstructionTuning(tokenizer)
    with_empty = collator([{"instruction": "Say hi", "input": "", "output": "Hi!"}])
    without = collator([{"instruction": "Say hi", "output": "Hi!"}])
    with_input = collator([{"instruction": "Say hi", "input": "to Bob", "output": "Hi!"}])
    assert_batch_equal(with_empty, without)
    assert tokenizer.decode(with_input["input_ids"][0]).startswith("<|im_start|>user\n Say hi\n\nto Bob<|im_end|>")


def test_train_on_prompt_labels_every_real_token(tokenizer):
    batch = DataCollatorForInstructionTuning(tokenizer, train_on_prompt=True)([ALPACA, MULTI_TURN])
    expected = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, X)
    assert_close(batch["labels"], expected, rtol=0, atol=0)


def test_pretokenised_examples_from_trl(tokenizer):
    input_ids, labels = conversation(tokenizer, ("user", "Say hi"), ("assistant", "Hi!"))
    mask = [int(label != X) for label in labels]
    collator = DataCollatorForInstructionTuning(tokenizer)
    for example in (
        {"input_ids": input_ids, "labels": labels},
        {"input_ids": input_ids, "assistant_masks": mask},
        {"input_ids": input_ids, "completion_mask": mask},
        {"input_ids": input_ids, "assistant_masks": mask, "completion_mask": [1] * len(mask)},
    ):
        assert_batch_equal(collator([example]), padded([(input_ids, labels)], len(input_ids)))
    everything = collator([{"input_ids": input_ids}])["labels"][0].tolist()
    assert everything == input_ids


# ---------------------------------------------------------------- truncation


def test_truncation_drops_prompt_from_the_left_first(tokenizer):
    input_ids, labels = conversation(tokenizer, ("user", "Say hi, please, to everybody here"), ("assistant", "Hi!"))
    max_length = len(input_ids) - 3
    batch = DataCollatorForInstructionTuning(tokenizer, max_length=max_length)(
        [{"input_ids": input_ids, "labels": labels}]
    )
    assert batch["input_ids"][0].tolist() == input_ids[3:]
    assert batch["labels"][0].tolist() == labels[3:]  # every trained token kept


def test_truncation_then_cuts_the_response_from_the_right(tokenizer):
    input_ids, labels = conversation(tokenizer, ("user", "Hi"), ("assistant", "The quick brown fox jumps over it"))
    first_trained = next(i for i, label in enumerate(labels) if label != X)
    collator = DataCollatorForInstructionTuning(tokenizer, max_length=4)
    batch = collator([{"input_ids": input_ids, "labels": labels}])
    assert batch["input_ids"][0].tolist() == input_ids[first_trained : first_trained + 4]
    assert batch["labels"][0].tolist() == labels[first_trained : first_trained + 4]
    assert collator.truncated_examples == 1


def test_examples_without_trained_tokens_are_warned_about(tokenizer, caplog):
    input_ids, _ = conversation(tokenizer, ("user", "Hi"), ("assistant", "Hello"))
    with caplog.at_level(logging.WARNING, logger="hf_instruct"):
        DataCollatorForInstructionTuning(tokenizer)([{"input_ids": input_ids, "labels": [X] * len(input_ids)}, ALPACA])
    assert "1 of 2 examples in this batch have no trained token" in caplog.text


# ---------------------------------------------------------------- padding-free


def test_padding_free_batch_exact(tokenizer):
    single = conversation(tokenizer, ("user", "Say hi"), ("assistant", "Hi!"))
    other = conversation(tokenizer, ("user", "Hi"), ("assistant", "Hello"))
    batch = DataCollatorForInstructionTuning(tokenizer, padding_free=True, pad_to_multiple_of=8)(
        [ALPACA, {"input_ids": other[0], "labels": other[1]}]
    )
    total = len(single[0]) + len(other[0])
    pad = -total % 8
    cu = torch.tensor([0, len(single[0]), total] + [total + i + 1 for i in range(pad)], dtype=torch.int32)
    first_labels = [X] + single[1][1:] + [X] + other[1][1:] + [X] * pad
    assert_batch_equal(
        batch,
        {
            "input_ids": torch.tensor([single[0] + other[0] + [0] * pad]),
            "position_ids": torch.tensor([list(range(len(single[0]))) + list(range(len(other[0]))) + [0] * pad]),
            "labels": torch.tensor([first_labels]),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max(len(single[0]), len(other[0])),
            "max_length_k": max(len(single[0]), len(other[0])),
        },
    )


@pytest.mark.parametrize("train_on_prompt", [False, True])  # True: a label at every boundary must be dropped
def test_padding_free_loss_equals_padded_loss(tokenizer, train_on_prompt):
    model = InstructGPTForCausalLM(tiny_config(attn_implementation="sdpa")).eval()
    examples = [ALPACA, MULTI_TURN, {"prompt": "What is two plus two?", "completion": "Four, of course."}]
    collate_padded = DataCollatorForInstructionTuning(tokenizer, train_on_prompt=train_on_prompt)
    collate_free = DataCollatorForInstructionTuning(tokenizer, padding_free=True, train_on_prompt=train_on_prompt)
    with torch.no_grad():
        padded_loss = model(**collate_padded(examples)).loss
        free_loss = model(**collate_free(examples)).loss
    assert_close(free_loss, padded_loss, atol=1e-6, rtol=1e-6)


def test_trained_logits_only_batch_exact(tokenizer):
    """The mask keeps exactly the positions whose next label is trained; shift_labels are those labels, in order."""
    single = conversation(tokenizer, ("user", "Say hi"), ("assistant", "Hi!"))
    for padding_free in (False, True):
        collate = DataCollatorForInstructionTuning(tokenizer, padding_free=padding_free, trained_logits_only=True)
        batch = collate([ALPACA, MULTI_TURN])
        plain = DataCollatorForInstructionTuning(tokenizer, padding_free=padding_free)([ALPACA, MULTI_TURN])
        assert_batch_equal({k: v for k, v in batch.items() if k not in ("logits_to_keep", "shift_labels")}, plain)
        labels = batch["labels"].tolist()
        expected = [[row[t + 1] != X if t + 1 < len(row) else False for t in range(len(row))] for row in labels]
        assert batch["logits_to_keep"].tolist() == expected
        assert batch["shift_labels"].tolist() == [x for row in labels for x in row[1:] if x != X]
    # one example, padded: the kept positions are those before the answer tokens, the targets the answer tokens
    batch = DataCollatorForInstructionTuning(tokenizer, trained_logits_only=True)([ALPACA])
    first = single[1].index(next(x for x in single[1] if x != X))
    assert batch["logits_to_keep"][0].nonzero().flatten().tolist()[0] == first - 1
    assert batch["shift_labels"].tolist() == [x for x in single[1] if x != X]


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("model_class", [InstructGPTForCausalLM, LlamaForCausalLM])
def test_trained_logits_only_gives_the_full_logits_loss_and_gradients(tokenizer, padding_free, model_class):
    """The LM head on the trained positions only: same loss and gradients as full logits, on ours and stock Llama."""
    config = (tiny_config if model_class is InstructGPTForCausalLM else tiny_llama_config)(dtype=torch.float32)
    model = model_class(config)
    examples = [ALPACA, MULTI_TURN, {"prompt": "What is two plus two?", "completion": "Four, of course."}]
    results = []
    for trained_logits_only in (False, True):
        collate = DataCollatorForInstructionTuning(
            tokenizer, padding_free=padding_free, trained_logits_only=trained_logits_only
        )
        batch = collate(examples)
        model.zero_grad()
        output = model(**batch, use_cache=False)
        output.loss.backward()
        results.append((output, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (kept, kept_grads) = results
    n_trained = int((batch["labels"][:, 1:] != X).sum())
    assert kept.logits.shape == (n_trained, config.vocab_size)
    assert_close(kept.logits, full.logits[batch["logits_to_keep"]], atol=1e-6, rtol=0)
    assert_close(kept.loss, full.loss, atol=1e-6, rtol=1e-6)
    for name, grad in full_grads.items():
        assert_close(kept_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20).filter(str.strip)),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
)
def test_labels_are_exactly_the_assistant_turns_for_random_conversations(tokenizer, turns, system):
    messages = [{"role": "system", "content": "sys"}] if system else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    batch = DataCollatorForInstructionTuning(tokenizer)([{"messages": messages}])
    trained = batch["labels"][0][batch["labels"][0] != X].tolist()
    assert tokenizer.decode(trained) == "".join(f" {answer.strip()}<|im_end|>" for _, answer in turns)
    free = DataCollatorForInstructionTuning(tokenizer, padding_free=True)([{"messages": messages}] * 2)
    starts = free["position_ids"][0] == 0
    assert (free["labels"][0][starts] == X).all()
    assert free["labels"][0][~starts].tolist() == 2 * batch["labels"][0][1:].tolist()


# ---------------------------------------------------------------- errors


def test_bad_examples_and_tokenizers_get_clear_errors(tokenizer):
    with pytest.raises(BadRecordError, match="example 1 of the batch: field 'output' is empty"):
        DataCollatorForInstructionTuning(tokenizer)([ALPACA, {"instruction": "x", "output": ""}])
    no_markers = copy.deepcopy(tokenizer)
    no_markers.chat_template = tokenizer.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    with pytest.raises(ValueError, match=r"needs \{% generation %\}"):
        DataCollatorForInstructionTuning(no_markers)([ALPACA])
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        DataCollatorForInstructionTuning(no_pad)


# ---------------------------------------------------------------- stock trainers

ALPACA_ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(4)
    for b in range(4)
]


@pytest.mark.parametrize("padding_free", [False, True])
def test_stock_trainer_with_raw_alpaca_examples(tmp_path, tokenizer, padding_free):
    trainer = Trainer(
        model=InstructGPTForCausalLM(tiny_config()),
        args=TrainingArguments(output_dir=str(tmp_path), remove_unused_columns=False, **SMOKE_TRAINING),
        train_dataset=Dataset.from_list(ALPACA_ROWS),
        data_collator=DataCollatorForInstructionTuning(tokenizer, padding_free=padding_free),
    )
    trainer.train()
    assert len(logged_losses(trainer)) == 3 and logged_losses(trainer)[-1] < logged_losses(trainer)[0]


@pytest.mark.parametrize("padding_free", [False, True])
def test_stock_trainer_with_trained_logits_only_logs_the_same_losses(tmp_path, tokenizer, padding_free):
    """The Trainer counts the trained tokens from shift_labels, so accumulated steps weigh them as with labels."""
    losses = []
    for trained_logits_only in (False, True):
        torch.manual_seed(0)
        collator = DataCollatorForInstructionTuning(
            tokenizer, padding_free=padding_free, trained_logits_only=trained_logits_only
        )
        args = TrainingArguments(
            output_dir=str(tmp_path), remove_unused_columns=False, gradient_accumulation_steps=2, **SMOKE_TRAINING
        )
        trainer = Trainer(
            model=InstructGPTForCausalLM(tiny_config()),
            args=args,
            train_dataset=Dataset.from_list(ALPACA_ROWS),
            data_collator=collator,
        )
        trainer.train()
        losses.append(logged_losses(trainer) + [trainer.evaluate(Dataset.from_list(ALPACA_ROWS[:5]))["eval_loss"]])
    assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_free", [False, True])
def test_trl_sft_trainer_with_the_collator_trains_only_assistant_tokens(tmp_path, tokenizer, padding_free):
    messages = Dataset.from_list([{"messages": to_messages(row)} for row in ALPACA_ROWS])
    collator = DataCollatorForInstructionTuning(tokenizer, padding_free=padding_free)
    trainer = SFTTrainer(
        model=InstructGPTForCausalLM(tiny_config()),
        args=SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=128, **SMOKE_TRAINING),
        train_dataset=messages,
        processing_class=tokenizer,
        data_collator=collator,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trained = batch["labels"][batch["labels"] != X].tolist()
    assert tokenizer.decode(trained).count("<|im_end|>") == 4 and "<|im_start|>" not in tokenizer.decode(trained)
    assert ("position_ids" in batch) is padding_free
    trainer.train()
    assert len(logged_losses(trainer)) == 3 and logged_losses(trainer)[-1] < logged_losses(trainer)[0]
