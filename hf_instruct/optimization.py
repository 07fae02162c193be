"""The optimizer and schedule settings every stage declares: `optim: muon` besides transformers' own optimizers, and
the warmup-stable-decay schedule with a readable decay length.

Muon (Jordan et al. 2024) updates each hidden weight matrix by its momentum orthogonalised with a Newton–Schulz
iteration: every direction of the update moves by about the same amount, so rare directions learn as fast as common
ones. It trains the modded-nanogpt speedrun records and nanochat in fewer tokens than AdamW. It is made for the 2-D
matrices inside the network (attention and MLP projections); embeddings, the LM or score head, norms and biases keep
AdamW (the same reference implementations do it so). `torch.optim.Muon` runs the iteration in bfloat16, which a CPU
without bf16 instructions emulates many times slower than fp32 (benchmarks/README.md, "bf16 on CPUs"), so here it runs
in float32 on a CPU and in bfloat16 on a GPU, as torch's. Muon does not run under DeepSpeed (ZeRO steps flattened
shards of the weights): such a run is refused.

The Trainer, its LR schedulers and its checkpoints expect one optimizer: `MuonWithAdamW` is one, whose param groups
are marked `"muon": True` or False; the schedule scales every group's own learning rate alike.

    from hf_instruct.optimization import optimizer_cls_and_kwargs
    trainer = Trainer(model, args, ..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args))

`args` is a stage config, or any `TrainingArguments` with `OptimizerArguments` mixed in; with another `optim` it gives
None and the Trainer builds its own optimizer. `create_muon_optimizer(model, args)` builds the optimizer itself.
"""

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, TrainingArguments
from transformers.trainer_pt_utils import get_parameter_names
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

MUON = "muon"
OPTIMIZERS = (MUON, *(name.value for name in OptimizerNames))
WSD = SchedulerType.WARMUP_STABLE_DECAY.value
# what the Trainer leaves out of weight decay (`Trainer.get_decay_parameter_names`)
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
ADJUST_LR = ("original", "match_rms_adamw")


@dataclass
class OptimizerArguments:
    """`optim: muon` and its settings, and the decay length of `lr_scheduler_type: warmup_stable_decay`, as fields of
    a `TrainingArguments` subclass: `class MyArguments(OptimizerArguments, TrainingArguments)`."""

    optim: str = field(
        default=TrainingArguments.default_optim,
        metadata={
            "help": "The optimizer: 'muon' (Muon for the hidden weight matrices, AdamW at learning_rate for "
            "embeddings, heads, norms and biases) or one of transformers' OptimizerNames.",
            "choices": list(OPTIMIZERS),
        },
    )
    muon_learning_rate: float = field(
        default=0.02,
        metadata={"help": "optim muon: the hidden matrices' learning rate (the AdamW groups keep learning_rate)."},
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "optim muon: Muon's (Nesterov) momentum."})
    muon_weight_decay: float = field(
        default=0.0, metadata={"help": "optim muon: decoupled weight decay of the hidden matrices (× their lr)."}
    )
    muon_adjust_lr: str = field(
        default="original",
        metadata={
            "help": "optim muon: how the lr scales with a matrix's shape: 'original' (× sqrt(max(1, rows/cols)), "
            "Keller Jordan's) or 'match_rms_adamw' (× 0.2 sqrt(max(rows, cols)): AdamW's update size, Moonshot's).",
            "choices": list(ADJUST_LR),
        },
    )
    lr_decay_steps: float | None = field(
        default=None,
        metadata={
            "help": "lr_scheduler_type warmup_stable_decay: the decay's length in steps (1 or more), or as a share "
            "of max_steps (below 1); sets lr_scheduler_kwargs' num_decay_steps."
        },
    )

    def __post_init__(self):
        optim = getattr(self.optim, "value", self.optim)
        if optim not in OPTIMIZERS:
            raise ValueError(
                f"--optim {optim!r} is not an optimizer here: expected 'muon' or one of transformers' "
                f"OptimizerNames ({', '.join(OPTIMIZERS[1:])})."
            )
        if optim.startswith("schedule_free") and importlib.util.find_spec("schedulefree") is None:
            raise ValueError(f"--optim {optim} needs the schedulefree package: pip install schedulefree.")
        if optim == MUON and self.deepspeed:
            raise ValueError(
                "--optim muon does not run under DeepSpeed: ZeRO hands the optimizer flattened shards of the weights, "
                "and Muon needs each matrix whole. Use DDP (torchrun), or another --optim."
            )
        if self.muon_adjust_lr not in ADJUST_LR:
            raise ValueError(f"--muon_adjust_lr {self.muon_adjust_lr!r}: expected one of {', '.join(ADJUST_LR)}.")
        # TrainingArguments knows only its own names: it checks a stand-in, then the field says muon again
        if optim == MUON:
            self.optim = TrainingArguments.default_optim
        super().__post_init__()
        if optim == MUON:
            self.optim = MUON
        resolve_decay_steps(self)


def resolve_decay_steps(args: TrainingArguments) -> None:
    """`lr_decay_steps` into `lr_scheduler_kwargs["num_decay_steps"]`, which `warmup_stable_decay` needs (without it
    the Trainer fails when training starts, with a TypeError that names no field)."""
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    kwargs = dict(args.lr_scheduler_kwargs or {})
    if args.lr_decay_steps is not None:
        if scheduler != WSD:
            raise ValueError(f"--lr_decay_steps is for --lr_scheduler_type {WSD}, not {scheduler}: leave it out.")
        if "num_decay_steps" in kwargs:
            raise ValueError("Set the decay's length once: --lr_decay_steps or lr_scheduler_kwargs' num_decay_steps.")
        if args.lr_decay_steps <= 0:
            raise ValueError(f"--lr_decay_steps must be above 0, got {args.lr_decay_steps}.")
        if args.lr_decay_steps < 1 and args.max_steps <= 0:
            raise ValueError(
                f"--lr_decay_steps {args.lr_decay_steps} is a share of --max_steps: set --max_steps, or give steps."
            )
        share = args.lr_decay_steps < 1
        kwargs["num_decay_steps"] = round(args.lr_decay_steps * args.max_steps if share else args.lr_decay_steps)
    if scheduler != WSD:
        return
    if "num_decay_steps" not in kwargs:
        raise ValueError(
            f"--lr_scheduler_type {WSD} needs the decay's length: set --lr_decay_steps (steps, or a share of "
            "--max_steps below 1) or lr_scheduler_kwargs: {num_decay_steps: N}."
        )
    if args.max_steps > 0 and "num_stable_steps" not in kwargs:
        warmup = args.get_warmup_steps(args.max_steps)
        if warmup + kwargs["num_decay_steps"] > args.max_steps:
            raise ValueError(
                f"--lr_scheduler_type {WSD}: {warmup} warmup and {kwargs['num_decay_steps']} decay steps do not fit "
                f"in --max_steps {args.max_steps}: shorten the decay (--lr_decay_steps) or the warmup."
            )
    args.lr_scheduler_kwargs = kwargs


def hidden_matrices(model: nn.Module) -> set[nn.Parameter]:
    """The 2-D weights inside the base model of every transformers model in `model` (the attention and MLP
    projections): not the embeddings, not the LM head, a reward model's `score` or any other head, which sit outside
    `base_model`. With LoRA, the adapters' matrices."""
    hidden, models = set(), [module for module in model.modules() if isinstance(module, PreTrainedModel)]
    if not models:
        raise ValueError(
            f"--optim muon needs a transformers model (it finds the hidden matrices in its base_model), not a "
            f"{type(model).__name__}."
        )
    for pretrained in models:
        heads = {id(pretrained.get_input_embeddings()), id(pretrained.get_output_embeddings())}
        for module in pretrained.base_model.modules():
            if isinstance(module, nn.Embedding) or id(module) in heads:
                continue
            hidden.update(p for p in module.parameters(recurse=False) if p.ndim == 2)
    return hidden


def create_muon_optimizer(model: nn.Module, args: TrainingArguments) -> "MuonWithAdamW":
    """Muon for the hidden matrices of `model` (at `args.muon_learning_rate`), AdamW at `args.learning_rate` for the
    rest, with the Trainer's weight decay rule (`weight_decay` except on norms and biases). `args` without Muon's
    fields (plain `TrainingArguments`) gets `OptimizerArguments`' defaults."""
    defaults = OptimizerArguments.__dataclass_fields__
    muon_setting = {name: getattr(args, name, defaults[name].default) for name in defaults}
    hidden = hidden_matrices(model)
    decay = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_PATTERNS))
    muon, adamw_decay, adamw_no_decay = [], [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = muon if parameter in hidden else adamw_decay if name in decay else adamw_no_decay
            group.append(parameter)
    if not muon:
        raise ValueError("--optim muon: the model has no trainable hidden matrices for Muon: choose another --optim.")
    muon_group = dict(
        params=muon,
        lr=muon_setting["muon_learning_rate"],
        momentum=muon_setting["muon_momentum"],
        weight_decay=muon_setting["muon_weight_decay"],
        adjust_lr_fn=muon_setting["muon_adjust_lr"],
    )
    adamw_groups = [
        dict(params=params, weight_decay=decay)
        for params, decay in ((adamw_decay, args.weight_decay), (adamw_no_decay, 0.0))
        if params
    ]
    adamw = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return MuonWithAdamW([muon_group], adamw_groups, adamw)


def optimizer_cls_and_kwargs(args: TrainingArguments) -> tuple[Callable, dict] | None:
    """What to pass as `optimizer_cls_and_kwargs` to a transformers or TRL Trainer: with `optim: muon`, a factory of
    `create_muon_optimizer`; else None (the Trainer builds its own optimizer for `args.optim`)."""
    if getattr(args, "optim", None) != MUON:
        return None
    # the Trainer calls a factory that is not an Optimizer class as `factory()(model, **kwargs)`
    return _muon_factory, {"args": args}


def _muon_factory() -> Callable[..., torch.optim.Optimizer]:
    return create_muon_optimizer


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` whose Newton–Schulz iteration runs in float32 on a CPU (bfloat16 elsewhere, as torch's)."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, momentum_buffers = [], [], []
            self._init_group(group, params, grads, momentum_buffers)
            momentum = group["momentum"]
            for param, grad, buffer in zip(params, grads, momentum_buffers, strict=True):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-group["lr"] * shape_scale(group["adjust_lr_fn"], param))
        return loss


def orthogonalise(matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float):
    """About U Vᵀ of `matrix` = U S Vᵀ: `steps` quintic Newton–Schulz iterations (torch.optim.Muon's), which bring its
    singular values into about [0.7, 1.2]; float32 on a CPU, bfloat16 elsewhere."""
    a, b, c = coefficients
    x = matrix.to(torch.float32 if matrix.device.type == "cpu" else torch.bfloat16)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def shape_scale(adjust_lr_fn: str | None, param: torch.Tensor) -> float:
    """torch.optim.Muon's learning-rate factor for a (rows, cols) matrix, which gives matrices of every shape updates
    of one size."""
    rows, cols = param.shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * max(rows, cols) ** 0.5
    return max(1.0, rows / cols) ** 0.5


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two, as the Trainer, its LR schedulers and its checkpoints expect one: `Muon` steps the param
    groups marked `"muon": True`, `torch.optim.AdamW` the others. Each group holds its optimizer's settings; a
    scheduler scales every group's `lr`; the state dict is one (both optimizers' state in `self.state`)."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], adamw_defaults: dict):
        # each optimizer fills its defaults into its groups (the same dicts, then handed to this one)
        self._muon = Muon([{**group, "muon": True} for group in muon_groups])
        self._adamw = (
            torch.optim.AdamW([{**group, "muon": False} for group in adamw_groups], **adamw_defaults)
            if adamw_groups
            else None
        )
        # AdamW's groups first: the Trainer logs the first group's lr as `learning_rate`
        super().__init__((self._adamw.param_groups if self._adamw else []) + self._muon.param_groups, {})

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # the groups and state are this optimizer's: load_state_dict, or a caller (PPO: value groups), may replace them
        for optimizer, muon in ((self._muon, True), (self._adamw, False)):
            if optimizer is not None:
                optimizer.param_groups = [group for group in self.param_groups if group["muon"] is muon]
                optimizer.state = self.state
                optimizer.step()
        return loss
