"""`optim: muon` and `lr_scheduler_type: warmup_stable_decay` as declared settings (hf_instruct/optimization.py):
which parameters Muon and AdamW get at which learning rate, that Muon's update is orthogonalised, the schedule's
phases, exact resume of a stock Trainer with the Muon state, and clear errors for bad settings. fp32 throughout."""

import json
import math
from dataclasses import dataclass

import datasets
import pytest
import torch
import yaml
from conftest import SMOKE_TRAINING, TEXT, tiny_config
from test_ppo import ppo_trainer
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification, PPOConfig
from hf_instruct.model_card import read_history
from hf_instruct.optimization import (
    MuonWithAdamW,
    OptimizerArguments,
    create_muon_optimizer,
    optimizer_cls_and_kwargs,
    orthogonalise,
    shape_scale,
)
from hf_instruct.stages import STAGES, PretrainStageConfig, parse_config, run_pretrain

HIDDEN = [
    f"model.layers.{layer}.{name}.weight"
    for layer in (0, 1)
    for name in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]
NORMS = [f"model.layers.{i}.{norm}.weight" for i in (0, 1) for norm in ("input_layernorm", "post_attention_layernorm")]


@dataclass
class MuonTrainingArguments(OptimizerArguments, TrainingArguments):
    """What a user of the stock Trainer writes to get the settings as fields."""


def muon_args(tmp_path, **overrides) -> MuonTrainingArguments:
    settings = dict(SMOKE_TRAINING, output_dir=str(tmp_path), optim="muon", learning_rate=1e-3, weight_decay=0.1)
    return MuonTrainingArguments(**{**settings, "muon_learning_rate": 0.05, **overrides})


def groups_by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[tuple[bool, float, float, list]]:
    names = {parameter: name for name, parameter in model.named_parameters()}
    return [(g["muon"], g["lr"], g["weight_decay"], [names[p] for p in g["params"]]) for g in optimizer.param_groups]


def test_muon_gets_the_hidden_matrices_and_adamw_the_embeddings_heads_norms_at_their_learning_rates(tmp_path):
    args = muon_args(tmp_path)
    causal = InstructGPTForCausalLM(tiny_config())
    trainer = Trainer(model=causal, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args))
    assert isinstance(trainer.create_optimizer(), MuonWithAdamW)
    assert groups_by_name(trainer.optimizer, causal) == [
        (False, 1e-3, 0.1, ["model.embed_tokens.weight", "lm_head.weight"]),
        (False, 1e-3, 0.0, [*NORMS, "model.norm.weight"]),
        (True, 0.05, 0.0, HIDDEN),
    ]
    # a reward model's score head is a head too; a tied LM head is the embedding (one AdamW parameter)
    reward = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
    assert groups_by_name(create_muon_optimizer(reward, args), reward)[0][3] == [
        "model.embed_tokens.weight",
        "score.weight",
    ]
    tied = InstructGPTForCausalLM(tiny_config(tie_word_embeddings=True))
    assert groups_by_name(create_muon_optimizer(tied, args), tied)[0][3] == ["model.embed_tokens.weight"]
    # another optim leaves the optimizer to the Trainer
    assert optimizer_cls_and_kwargs(muon_args(tmp_path, optim="adamw_torch")) is None


def test_muon_update_of_a_matrix_is_orthogonalised(tmp_path):
    """With no momentum the update is the gradient orthogonalised: a gradient whose singular values span 100× moves
    the weight along every direction by about the same amount (Newton–Schulz brings them into about [0.7, 1.2])."""
    model = InstructGPTForCausalLM(tiny_config())
    optimizer = create_muon_optimizer(model, muon_args(tmp_path, muon_momentum=0.0))
    weight = model.model.layers[0].mlp.gate_proj.weight  # (96, 64): a tall matrix
    left, _ = torch.linalg.qr(torch.randn(96, 64))
    right, _ = torch.linalg.qr(torch.randn(64, 64))
    spread = torch.logspace(0, -2, 64)
    weight.grad = left @ torch.diag(spread) @ right.T
    before = weight.detach().clone()
    optimizer.step()
    update = (before - weight.detach()) / (0.05 * shape_scale("original", weight))
    assert shape_scale("original", weight) == math.sqrt(96 / 64)
    singular_values = torch.linalg.svdvals(update)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25, singular_values
    # in the gradient's directions: update = U S' Vᵀ with S' near 1 (the gradient is U diag(spread) Vᵀ)
    assert torch.linalg.matrix_norm(update - left @ right.T, ord=2) < 0.4
    # torch.optim.Muon's own iteration (bfloat16) gives the same update to bf16 precision
    torch_update = torch.optim._muon._zeropower_via_newtonschulz(weight.grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
    ours = orthogonalise(weight.grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch_update.float(), atol=0.03, rtol=0)


def wsd_factors(steps: int, warmup: int, decay: int) -> list[float]:
    """transformers' warmup-stable-decay factor for each step (its decay starts at the peak, cosine by default)."""
    stable = steps - warmup - decay
    return [
        k / warmup
        if k < warmup
        else 1.0
        if k < warmup + stable
        else 0.5 * (1 + math.cos(math.pi * (k - warmup - stable) / decay))
        for k in range(steps)
    ]


class RecordLearningRates(TrainerCallback):
    """The lr each param group trains with at every step."""

    def __init__(self):
        self.rates = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([group["lr"] for group in optimizer.param_groups])


def test_a_stage_yaml_declares_muon_and_a_warmup_stable_decay_with_the_phase_lengths_asked(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 30)
    fields = dict(
        {k: v for k, v in SMOKE_TRAINING.items() if k != "use_cpu"},
        train_files=[str(corpus)],
        vocab_size=300,
        block_size=16,
        eval_blocks=0,
        model_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        max_steps=10,
        optim="muon",
        muon_learning_rate=0.04,
        lr_scheduler_type="warmup_stable_decay",
        warmup_steps=2,
        lr_decay_steps=0.3,  # a share of max_steps: 3 steps
    )
    config_file = tmp_path / "pretrain.yaml"
    config_file.write_text(yaml.safe_dump(fields))
    config = parse_config(PretrainStageConfig, ["--config", str(config_file), "--output_dir", str(tmp_path / "out")])
    assert config.optim == "muon" and config.lr_scheduler_kwargs == {"num_decay_steps": 3}
    recorder = RecordLearningRates()
    run_pretrain(config, callbacks=[recorder])
    factors = wsd_factors(10, warmup=2, decay=3)
    assert factors[:3] == [0.0, 0.5, 1.0] and factors[2:8] == [1.0] * 6 and factors[8:] == pytest.approx([0.75, 0.25])
    # every group follows the schedule at its own peak: AdamW (2 groups) at learning_rate, Muon at muon_learning_rate
    expected = torch.tensor([[3e-3 * f, 3e-3 * f, 0.04 * f] for f in factors], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(recorder.rates, dtype=torch.float64), expected, atol=1e-12, rtol=0)
    hyperparameters = read_history(tmp_path / "out")[-1]["hyperparameters"]
    assert (hyperparameters["optim"], hyperparameters["muon_learning_rate"]) == ("muon", 0.04)
    assert hyperparameters["lr_scheduler_kwargs"] == {"num_decay_steps": 3}
    # the stock way to give the decay's length works too
    stock = dict(fields, lr_decay_steps=None, lr_scheduler_kwargs={"num_decay_steps": 4})
    config_file.write_text(yaml.safe_dump(stock))
    config = parse_config(PretrainStageConfig, ["--config", str(config_file), "--output_dir", str(tmp_path / "b")])
    assert config.lr_scheduler_kwargs == {"num_decay_steps": 4}


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_run_resumed_from_a_checkpoint_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """The stock Trainer with `optimizer_cls_and_kwargs`: the checkpoint holds Muon's momentum and AdamW's moments in
    one optimizer state, and the schedule's step; a resumed run equals an uninterrupted one exactly (one process)."""
    blocks = datasets.Dataset.from_dict({"input_ids": torch.randint(3, 320, (48, 16)).tolist()})
    blocks = blocks.map(lambda row: {"labels": row["input_ids"]})
    settings = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        lr_scheduler_type="warmup_stable_decay",
        warmup_steps=1,
        lr_decay_steps=2,
    )

    def trainer(output_dir, *callbacks):
        torch.manual_seed(0)
        args = muon_args(output_dir, **settings)
        model = InstructGPTForCausalLM(tiny_config())
        kwargs = dict(optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args), callbacks=list(callbacks))
        return Trainer(model=model, args=args, train_dataset=blocks, **kwargs)

    reference = trainer(tmp_path / "reference")
    reference.train()
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "resumed", CrashAt(step=3)).train()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert isinstance(resumed.optimizer.optimizer, MuonWithAdamW)
    expected, actual = reference.model.state_dict(), resumed.model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    # the optimizer state mattered: resumed without it (Muon's momentum, AdamW's moments), the run ends elsewhere
    (tmp_path / "resumed" / "checkpoint-2" / "optimizer.pt").unlink()
    forgetful = trainer(tmp_path / "forgetful")
    forgetful.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    hidden = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(forgetful.model.state_dict()[hidden], expected[hidden], atol=1e-4)


def test_bad_optimizer_and_schedule_settings_are_refused_naming_the_field(tmp_path):
    common = dict(output_dir=str(tmp_path), train_files=["x.txt"], bf16=False)
    with pytest.raises(ValueError, match=r"--optim 'muonn' is not an optimizer here: expected 'muon' or one of"):
        PretrainStageConfig(**common, optim="muonn")
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("train_files: [x.txt]\noptim: adam\n")
    with pytest.raises(ValueError, match=r"bad.yaml: optim: 'adam' is not valid: expected one of muon, adamw_torch"):
        parse_config(PretrainStageConfig, ["--config", str(config_file), "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--muon_learning_rate must be above 0, got 0"):
        PretrainStageConfig(**common, optim="muon", muon_learning_rate=0)
    with pytest.raises(ValueError, match="needs the schedulefree package"):
        PretrainStageConfig(**common, optim="schedule_free_adamw")
    with pytest.raises(ValueError, match="warmup_stable_decay needs the decay's length: set --lr_decay_steps"):
        PretrainStageConfig(**common, lr_scheduler_type="warmup_stable_decay", max_steps=10)
    with pytest.raises(ValueError, match="2 warmup and 9 decay steps do not fit in --max_steps 10"):
        PretrainStageConfig(
            **common, lr_scheduler_type="warmup_stable_decay", warmup_steps=2, lr_decay_steps=9, max_steps=10
        )
    with pytest.raises(
        ValueError, match="--lr_decay_steps is for --lr_scheduler_type warmup_stable_decay, not cosine"
    ):
        PretrainStageConfig(**common, lr_scheduler_type="cosine", lr_decay_steps=3, max_steps=10)
    with pytest.raises(ValueError, match="--optim muon does not run under DeepSpeed: ZeRO hands the optimizer"):
        PretrainStageConfig(**common, optim="muon", deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match="--optim muon needs a transformers model"):
        create_muon_optimizer(torch.nn.Linear(4, 4), muon_args(tmp_path))


@dataclass
class MuonPPOConfig(OptimizerArguments, PPOConfig):
    """PPO's config with the optimizer fields, as the PPO stage's."""


def test_ppo_gives_the_value_models_muon_group_value_learning_rate_over_learning_rate_times_muon_learning_rate(
    tmp_path, tokenizer
):
    settings = dict(SMOKE_TRAINING, max_steps=2, per_device_train_batch_size=16, learning_rate=1e-3)
    args = MuonPPOConfig(
        **settings,
        output_dir=str(tmp_path),
        num_mini_batches=2,
        response_length=12,
        num_sample_completions=0,
        optim="muon",
        muon_learning_rate=0.02,
        value_learning_rate=1e-2,
    )
    trainer = ppo_trainer(tokenizer, args)
    trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs(args)  # as the stages set it
    optimizer = trainer.create_optimizer()
    value_parameters = set(trainer.value_model.parameters())
    rates = set()
    for group in optimizer.param_groups:
        (in_value_model,) = {parameter in value_parameters for parameter in group["params"]}
        rates.add((group["muon"], in_value_model, round(group["lr"], 12)))
    assert rates == {(False, False, 1e-3), (True, False, 0.02), (False, True, 1e-2), (True, True, 0.2)}
    trainer.train()  # the Trainer steps the split groups (each optimizer's own)


class RecordOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer, self.model = optimizer.optimizer, model  # the Trainer's, inside accelerate's wrapper


@pytest.mark.parametrize(("stage", "head"), [("sft", "lm_head.weight"), ("reward", "score.weight"), ("dpo", None)])
def test_every_stage_trains_with_optim_muon(tmp_path, tiny_model_dir, instructions, stage, head):
    """The stages set the optimizer in `train_and_save`: also DPO's and GRPO's trainers, which take no
    `optimizer_cls_and_kwargs`."""
    pairs = tmp_path / "pairs.jsonl"
    row = {"prompt": "Tell me about the sea.", "chosen": "Thank you, gladly.", "rejected": "Go away."}
    pairs.write_text((json.dumps(row) + "\n") * 16)
    settings = dict(SMOKE_TRAINING, max_steps=2, max_length=64, eval_examples=0, muon_learning_rate=0.01)
    config = STAGES[stage].config_class(
        **{k: v for k, v in settings.items() if k != "use_cpu"},
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(instructions if stage == "sft" else pairs)],
        output_dir=str(tmp_path / stage),
        optim="muon",
    )
    recorder = RecordOptimizer()
    STAGES[stage].run(config, callbacks=[recorder])
    assert isinstance(recorder.optimizer, MuonWithAdamW)
    groups = groups_by_name(recorder.optimizer, recorder.model)
    assert groups[-1][0] and groups[-1][3] == HIDDEN
    assert recorder.optimizer.param_groups[-1]["initial_lr"] == 0.01  # the peak the schedule scales
    assert head is None or head in groups[0][3]
