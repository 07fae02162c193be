"""PPO correctness: no dropout in the updates of any transformers model (stock OPT), prompts and rewards right with
BOS-adding SentencePiece tokenizers, one all-reduce per accumulated minibatch and whitening over every process under
DDP, settings that cannot train refused, exact resume with tied embeddings after kill -9, and the smaller footguns
(pad ≠ EOS, the saved sampling temperature, ZeRO-3 generation, a BERT-style reward model, the ptx order)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import CLI_ENV, REPO, TEXT, flags, free_port, tiny_config, tiny_llama_config
from safetensors.torch import load_file
from test_ppo import lora_config, ppo_args, ppo_trainer, rollout_batch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GenerationConfig,
    LlamaForSequenceClassification,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
)

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification, PPOTrainer
from hf_instruct.stages.loading import load_tokenizer
from hf_instruct.trainers import ppo_trainer as ppo_module
from hf_instruct.trainers.ppo_utils import reward_texts
from hf_instruct.utils import reward_scores

TESTS = Path(__file__).resolve().parent

# ---------------------------------------------------------------- dropout


def tiny_opt(**overrides) -> OPTForCausalLM:
    """A stock OPT causal LM with every kind of dropout it has: `dropout`, `attention_dropout`, `activation_dropout`
    (floats passed to F.dropout) and `layerdrop`."""
    config = OPTConfig(
        vocab_size=320,
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **{"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1, "layerdrop": 0.1, **overrides},
    )
    return OPTForCausalLM(config)


def test_the_first_update_of_an_opt_policy_has_ratio_exactly_one(tmp_path, tokenizer):
    """Before any optimiser step π = π_old: ratio 1 and approx-KL 0 exactly, as for Llama (OPT's float `dropout`
    rates stayed on: ratio 1.0015)."""
    args = ppo_args(tmp_path, per_device_train_batch_size=8, num_mini_batches=1)
    trainer = ppo_trainer(tokenizer, args, model=tiny_opt())
    rollout = trainer._rollout(rollout_batch(trainer))
    trainer.model.train()
    trainer._update(trainer.model, rollout, torch.arange(8))
    assert trainer._metrics["val/ratio"][0].item() == 1.0
    assert trainer._metrics["policy/approxkl"][0].item() == 0.0


def test_a_dropout_ppo_cannot_zero_is_refused_at_the_start(tmp_path, tokenizer):
    """A rate read at run time from somewhere else (here: a hook's own) is caught by two train-mode forwards."""
    policy = InstructGPTForCausalLM(tiny_config())
    rate = 0.1
    policy.model.norm.register_forward_hook(
        lambda module, args, output: torch.nn.functional.dropout(output, p=rate, training=module.training)
    )
    with pytest.raises(ValueError, match=r"The policy \(InstructGPTForCausalLM\) still drops out in train mode"):
        ppo_trainer(tokenizer, ppo_args(tmp_path), model=policy)


def test_lora_dropout_is_zeroed_and_said(tmp_path, tokenizer, caplog):
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path), peft_config=lora_config(lora_dropout=0.1))
    rates = [module.p for name, module in trainer.policy.named_modules() if isinstance(module, torch.nn.Dropout)]
    assert rates and set(rates) == {0.0}
    assert "lora_dropout 0.1 of the LoRA adapter is set to 0" in caplog.text


# ---------------------------------------------------------------- a SentencePiece tokenizer that adds a BOS


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer built on the spot: SentencePiece-like BPE (Metaspace), a BOS added to every text,
    `<unk>` `<s>` `</s>` and no pad token."""
    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    corpus = [TEXT + "Answer: yes. "] * 20
    model.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    model.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_text_prompts_start_with_the_bos_and_the_reward_model_reads_what_the_policy_wrote(tmp_path):
    """The policy rolls out from the BOS it was trained with; a Metaspace decoder drops the first token's leading
    space, so a reward function and the reward model read "Answer: The quick", not "Answer:The quick"."""
    tokenizer = metaspace_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token
    seen = []

    def record(prompts, completions, completion_ids):
        seen.extend(completions)
        return [0.0] * len(completions)

    text_prompts = datasets.Dataset.from_dict({"prompt": ["Answer:"] * 8})
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path), train_dataset=text_prompts, reward_model=record)
    prompt_ids = trainer.train_dataset[0]["input_ids"]
    assert prompt_ids == [tokenizer.bos_token_id, *tokenizer("Answer:", add_special_tokens=False)["input_ids"]]

    written = tokenizer("Answer: The quick", add_special_tokens=False)["input_ids"]
    answer = written[len(prompt_ids) - 1 :]
    assert tokenizer.decode(answer) == "The quick"  # decoded alone: no leading space
    batch = trainer._left_pad([{"input_ids": prompt_ids}])
    responses, ended = torch.tensor([answer]), torch.tensor([False])
    mask = torch.ones_like(responses)
    trainer._scores(["Answer:"], batch["input_ids"], batch["attention_mask"], responses, mask, ended)
    assert seen == [" The quick"]

    reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path), train_dataset=text_prompts, reward_model=reward_model)
    score = trainer._scores(["Answer:"], batch["input_ids"], batch["attention_mask"], responses, mask, ended)
    read = torch.tensor([[tokenizer.bos_token_id, *written]])  # what reward training reads for this text
    torch.testing.assert_close(score, reward_model(input_ids=read).logits[:, 0].detach())


def test_the_pad_token_is_not_the_eos_so_the_reward_model_reads_the_eos(tmp_path):
    """A tokenizer without a pad token pads with its unknown token (Huang et al. 2024): a stock classifier, which
    scores the last token that is not padding, then scores a finished answer at its EOS."""
    tokenizer = metaspace_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = load_tokenizer(SimpleNamespace(tokenizer_name_or_path=None, model_name_or_path=tmp_path / "tokenizer"))
    assert loaded.pad_token == "<unk>" and loaded.pad_token_id != loaded.eos_token_id

    classifier = LlamaForSequenceClassification(tiny_llama_config(num_labels=1, pad_token_id=loaded.pad_token_id))
    classifier.eval()
    text = "The quick" + loaded.eos_token
    ids = loaded(text, return_tensors="pt")["input_ids"]
    assert ids[0, -1] == loaded.eos_token_id
    with torch.no_grad():
        at_eos = classifier.score(classifier.model(input_ids=ids).last_hidden_state)[0, -1, 0]
        score = reward_scores(classifier, loaded, [text, "The"], add_special_tokens=True)[0]
    torch.testing.assert_close(score, at_eos)


# ---------------------------------------------------------------- settings that cannot train, and a saved policy


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"kl_target": -1.0}, r"kl_target must be > 0 \(or None: a fixed β\), got -1.0"),
        ({"num_ppo_epochs": 0}, r"num_ppo_epochs must be ≥ 1 \(passes over a rollout batch\), got 0\."),
    ],
)
def test_settings_that_cannot_train_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        ppo_args(tmp_path, **settings)


@pytest.mark.parametrize("section", ["scheduler", "optimizer"])
def test_a_deepspeed_config_with_its_own_scheduler_or_optimizer_is_refused(tmp_path, tokenizer, monkeypatch, section):
    """DeepSpeed would step its scheduler once per PPO update (num_ppo_epochs × num_mini_batches per step), and its
    optimiser has no value_learning_rate."""
    create_accelerator = Trainer.create_accelerator_and_postprocess
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}, section: {"type": "WarmupLR"}})

    def as_if_launched_with_deepspeed(self):
        create_accelerator(self)
        self.is_deepspeed_enabled = True
        monkeypatch.setattr(type(self.accelerator.state), "deepspeed_plugin", plugin)

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_if_launched_with_deepspeed)
    with pytest.raises(ValueError, match=f"The DeepSpeed config has its own `{section}`: it would"):
        ppo_trainer(tokenizer, ppo_args(tmp_path))


def test_the_saved_policy_samples_at_the_temperature_its_kl_was_held_at(tmp_path, tokenizer):
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, temperature=0.7))
    trainer.save_model()
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert (saved.do_sample, saved.temperature, saved.top_k, saved.top_p) == (True, 0.7, 0, 1.0)


def test_a_bert_style_reward_model_scores_and_cannot_be_the_value_model(tmp_path, tokenizer):
    """A `.classifier` head reads one pooled position: a reward model, yes; the (default) value model, refused."""
    bert = BertConfig(
        vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    reward_model = BertForSequenceClassification(bert).eval()
    with pytest.raises(ValueError, match=r"The reward_model \(BertForSequenceClassification\) has no `score` head"):
        ppo_trainer(tokenizer, ppo_args(tmp_path), reward_model=reward_model, value_model=None)
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, missing_eos_penalty=0.0), reward_model=reward_model)
    batch = rollout_batch(trainer, 4)
    rollout = trainer._rollout(batch)
    completions = tokenizer.batch_decode(
        [row[mask.bool()] for row, mask in zip(rollout.responses, rollout.mask, strict=True)], skip_special_tokens=True
    )
    texts = reward_texts(tokenizer, trainer.train_dataset[:4]["prompt"], completions, rollout.ended.tolist())
    with torch.no_grad():
        expected = [reward_model(**tokenizer(text, return_tensors="pt")).logits[0, 0] for text in texts]
    torch.testing.assert_close(rollout.scores, torch.stack(expected))


# ---------------------------------------------------------------- ZeRO-3 generation


@pytest.mark.parametrize("gather", [True, False])
def test_zero3_generation_gives_the_engine_its_hooks_back_even_when_it_fails(tmp_path, tokenizer, monkeypatch, gather):
    """With ds3_gather_for_generation (TRL's name) the whole policy is gathered and the engine's layer-by-layer hooks
    are off meanwhile, back in place also after an error; without it, the engine's hooks fetch the weights."""
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, **({} if gather else {"ds3_gather_for_generation": False})))
    calls = []
    monkeypatch.setattr(PPOTrainer, "_zero3", True)
    monkeypatch.setattr(ppo_module, "remove_hooks", lambda model: calls.append("removed"))
    monkeypatch.setattr(ppo_module, "add_hooks", lambda model: calls.append("added"))
    with pytest.raises(RuntimeError, match="out of memory"), trainer._policy_for_generation():
        raise RuntimeError("out of memory")
    assert calls == (["removed", "added"] if gather else [])


# ---------------------------------------------------------------- the pretraining mix


def test_the_ptx_blocks_come_in_a_new_order_every_pass_and_a_resumed_run_draws_the_same(tmp_path, tokenizer):
    blocks = datasets.Dataset.from_dict({"input_ids": [[block] * 4 for block in range(6)]})
    args = ppo_args(tmp_path, ptx_coef=0.5, ptx_batch_size=2)
    trainer = ppo_trainer(tokenizer, args, ptx_dataset=blocks)
    drawn = [row[0] for _ in range(10) for row in trainer._next_ptx_batch().tolist()]
    passes = [drawn[start : start + 6] for start in (0, 6, 12)]
    assert all(sorted(order) == list(range(6)) for order in passes)
    assert len({tuple(order) for order in passes}) == 3, passes
    resumed = ppo_trainer(tokenizer, args, ptx_dataset=blocks)
    resumed.state.global_step = 1  # after a step of 4 epochs × 2 minibatches × 2 blocks
    assert [row[0] for row in resumed._next_ptx_batch().tolist()] == drawn[16:18]


# ---------------------------------------------------------------- resume


def test_a_checkpoint_without_its_rng_state_resumes_with_a_warning(tmp_path, tokenizer):
    settings = dict(max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=4, response_length=4)
    ppo_trainer(tokenizer, ppo_args(tmp_path, **settings)).train()
    os.remove(tmp_path / "checkpoint-1" / "rng_state.pth")
    resumed = ppo_trainer(tokenizer, ppo_args(tmp_path, **settings))
    with pytest.warns(UserWarning, match=r"checkpoint-1 has no rng_state\.pth: .*resume is not exact"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


# Trains tiny PPO-ptx runs with the recipes' model shape (tied embeddings). `run`: an uninterrupted run in
# <folder>/reference, then one in <folder>/killed that kill -9s itself after its third step (its last checkpoint is
# the second); `resume`: a new process resumes the killed run from its last checkpoint.
TIED_RUN_SCRIPT = """
import os, signal, sys
import datasets, torch
sys.path.insert(0, sys.argv[3])
from conftest import TEXT, tiny_config
from test_ppo import ppo_args, ppo_trainer
from transformers import TrainerCallback
from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification, train_tokenizer

class KillAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

def train(folder, resume=False, callbacks=()):
    tokenizer = train_tokenizer([TEXT] * 20, vocab_size=320, show_progress=False)
    blocks = datasets.Dataset.from_dict({"input_ids": [[block] * 16 for block in range(10)]})
    args = ppo_args(folder, max_steps=4, save_strategy="steps", save_steps=1, per_device_train_batch_size=4,
                    num_ppo_epochs=2, response_length=6, ptx_coef=0.5, ptx_batch_size=2, kl_target=1.0, kl_horizon=16,
                    lr_scheduler_type="linear")
    torch.manual_seed(0)
    tied = dict(tie_word_embeddings=True)
    trainer = ppo_trainer(tokenizer, args, model=InstructGPTForCausalLM(tiny_config(**tied)),
                          value_model=InstructGPTForSequenceClassification(tiny_config(num_labels=1, **tied)),
                          ptx_dataset=blocks, callbacks=list(callbacks))
    assert trainer.policy.lm_head.weight is trainer.policy.model.embed_tokens.weight
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.policy.lm_head.weight is trainer.policy.model.embed_tokens.weight

folder = sys.argv[2]
if sys.argv[1] == "run":
    train(os.path.join(folder, "reference"))
    train(os.path.join(folder, "killed"), callbacks=[KillAfter()])
else:
    train(os.path.join(folder, "killed"), resume=True)
"""


@pytest.mark.slow
def test_ppo_with_tied_embeddings_resumes_bitwise_after_kill_9(tmp_path):
    """Every recipe's model ties its LM head to its embeddings, which a checkpoint stores once: resuming crashed
    ('PolicyAndValueModel' object has no attribute '_keys_to_ignore_on_save'). Killed with SIGKILL after step 3 and
    resumed from checkpoint-2 in a new process, the run ends with the policy, value model, β and scores of the
    uninterrupted one, bit for bit."""
    script = tmp_path / "tied_run.py"
    script.write_text(TIED_RUN_SCRIPT)
    command = [sys.executable, str(script)]
    killed = subprocess.run([*command, "run", str(tmp_path), str(TESTS)], env=CLI_ENV, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    reference, resumed = tmp_path / "reference" / "checkpoint-4", tmp_path / "killed" / "checkpoint-4"
    assert not resumed.exists() and (tmp_path / "killed" / "checkpoint-2").exists()
    proc = subprocess.run([*command, "resume", str(tmp_path), str(TESTS)], env=CLI_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for weights in ("model.safetensors", "value_model/model.safetensors"):
        expected, actual = load_file(reference / weights), load_file(resumed / weights)
        assert "lm_head.weight" not in expected  # stored once, as the embeddings
        assert expected.keys() == actual.keys()
        assert all(torch.equal(actual[name], tensor) for name, tensor in expected.items()), weights
    for name in ("ppo_state.json", "trainer_state.json"):
        expected, actual = (json.loads((folder / name).read_text()) for folder in (reference, resumed))
        if name == "trainer_state.json":  # the logs of both, less the timings
            expected, actual = (
                [
                    {k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
                    for e in state["log_history"]
                ]
                for state in (expected, actual)
            )
        assert actual == expected, name


# ---------------------------------------------------------------- DDP

# One PPO step on 2 processes, its minibatch in 4 micro-batches: counts DDP's all-reduce rounds (a comm hook on the
# first bucket) and writes, per rank, the rounds and its share of the whitened advantages' sums.
DDP_SCRIPT = """
import json, os, sys
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
sys.path.insert(0, sys.argv[2])
from conftest import TEXT
from test_ppo import ppo_args, ppo_trainer
from hf_instruct import train_tokenizer

tokenizer = train_tokenizer([TEXT] * 20, vocab_size=320, show_progress=False)
args = ppo_args(sys.argv[1], max_steps=1, per_device_train_batch_size=8, num_mini_batches=1, num_ppo_epochs=1,
                gradient_accumulation_steps=4)
trainer = ppo_trainer(tokenizer, args)
rounds, rollouts = [], []

def counted(state, bucket):
    if bucket.index() == 0:
        rounds.append(1)
    return allreduce_hook(None, bucket)

update, rollout = trainer._update, trainer._rollout
def hooked_update(model, *args):
    if not hasattr(model, "hooked"):
        model.register_comm_hook(None, counted)
        model.hooked = True
    return update(model, *args)
def recorded_rollout(*args):
    rollouts.append(rollout(*args))
    return rollouts[-1]
trainer._update, trainer._rollout = hooked_update, recorded_rollout
trainer.train()
advantages, mask = rollouts[0].advantages, rollouts[0].mask
with open(os.path.join(args.output_dir, f"rank{args.process_index}.json"), "w") as f:
    json.dump({"world_size": args.world_size, "rounds": len(rounds), "count": mask.sum().item(),
               "sum": advantages.sum().item(), "squares": (advantages ** 2).sum().item()}, f)
"""


@pytest.mark.slow
def test_ddp_accumulation_all_reduces_once_per_minibatch_and_whitens_over_every_process(tmp_path):
    """4 micro-batches, 1 all-reduce (the forward runs inside no_sync too: DDP decides in the forward); the advantages
    have mean 0 and variance 1 over both processes' tokens, not each process's own."""
    script = tmp_path / "ddp_ppo.py"
    script.write_text(DDP_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", *flags(nproc_per_node=2, master_port=free_port())]
    proc = subprocess.run(
        [*launcher, str(script), str(tmp_path), str(TESTS)], cwd=REPO, env=CLI_ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(rank["world_size"], rank["rounds"]) for rank in ranks] == [(2, 1), (2, 1)]
    count = sum(rank["count"] for rank in ranks)
    mean = sum(rank["sum"] for rank in ranks) / count
    assert abs(mean) < 1e-5
    assert sum(rank["squares"] for rank in ranks) / count == pytest.approx(1.0, abs=1e-4)
    assert max(abs(rank["sum"]) for rank in ranks) > 1e-2  # each process's share alone is not whitened
