"""Stock Hugging Face tools accept the model as they accept Llama: PEFT, Trainer, TRL SFT/Reward trainers, pipeline."""

import torch
from conftest import SMOKE_TRAINING, TEXT, logged_losses, tiny_config
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch.testing import assert_close
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, pipeline
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification


def text_dataset(tokenizer, n: int = 16) -> Dataset:
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    rows = [" ".join(sentences[i % len(sentences) :] + sentences[: i % len(sentences)]) for i in range(n)]
    return Dataset.from_dict({"text": rows})


def test_lora_all_linear_trains_and_merges_to_the_same_logits():
    model = InstructGPTForCausalLM(tiny_config())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    targeted = {name.split(".")[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    input_ids = torch.randint(3, 320, (4, 16))
    losses = []
    for _ in range(5):
        loss = peft_model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=input_ids).logits
        merged = peft_model.merge_and_unload()
        assert type(merged) is InstructGPTForCausalLM
        assert_close(merged(input_ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_stock_trainer_trains_three_steps(tmp_path, tokenizer):
    model = InstructGPTForCausalLM(tiny_config())
    dataset = text_dataset(tokenizer).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), **SMOKE_TRAINING),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    result = trainer.train()
    assert result.global_step == 3
    losses = logged_losses(trainer)
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_trl_sft_trainer_trains_the_model_object(tmp_path, tokenizer):
    model = InstructGPTForCausalLM(tiny_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), max_length=64, **SMOKE_TRAINING),
        train_dataset=text_dataset(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = logged_losses(trainer)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_trl_reward_trainer_trains_the_sequence_classifier(tmp_path, tokenizer):
    model = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    pairs = Dataset.from_dict(
        {
            "chosen": [sentences[i % len(sentences)] for i in range(16)],
            "rejected": [sentences[i % len(sentences)][::-1] for i in range(16)],
        }
    )
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=str(tmp_path), max_length=64, **SMOKE_TRAINING),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert model.config.pad_token_id == tokenizer.pad_token_id
    losses = logged_losses(trainer)
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_text_generation_pipeline(tokenizer):
    model = InstructGPTForCausalLM(tiny_config()).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompt = "The quick brown"
    text = generator(prompt, max_new_tokens=5, do_sample=False, eos_token_id=None)[0]["generated_text"]
    expected = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)
    assert len(tokenizer(text)["input_ids"]) == len(tokenizer(prompt)["input_ids"]) + 5
