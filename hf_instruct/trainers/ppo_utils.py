"""PPO's algorithm as plain functions (losses, advantages, KL and its controller), the text a reward source reads,
and the model helpers `PPOTrainer` builds on: functions of tensors and models, with no trainer state."""

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.utils import logging
from trl.trainer.utils import pad

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------- the algorithm, as plain functions


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_variance(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The (population) variance of the unmasked entries."""
    return masked_mean((values - masked_mean(values, mask)) ** 2, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(returns − values) / Var(returns) over the unmasked tokens: 1 for a perfect value model, 0 for one no
    better than the mean return, negative for a worse one."""
    return 1 - masked_variance(returns - values, mask) / masked_variance(returns, mask).clamp(min=1e-8)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Zero mean, unit variance over the unmasked entries (masked entries become 0). With `sum_over_processes` (an
    all-reduce sum) the statistics are those of every process's entries: each process's rollout is one share of one
    batch, and whitening each share on its own would rescale its advantages by its own spread."""
    total = sum_over_processes or (lambda tensor: tensor)
    count = total(mask.sum().float()).clamp(min=1)
    mean = total((values * mask).sum()) / count
    variance = total((((values - mean) ** 2) * mask).sum()) / count
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled tokens (Schulman, "Approximating KL divergence", 2020):
    k1 = log π − log π_ref (unbiased, can be negative), k3 = r − 1 − log r with r = π_ref/π (unbiased, ≥ 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −β·KL (the `kl_estimate` of each token), plus the sequence score on the last response token;
    and the KL."""
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator) * mask
    rewards = -kl_coef * kl
    last_token = mask.sum(dim=1).long() - 1
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last_token] += scores
    return rewards, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over each response (the value after the last token is 0)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's pessimistic surrogate: mean over tokens of max(−A·r, −A·clip(r, 1 − ε, 1 + ε)), r = π/π_old."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "policy/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
        "val/ratio": masked_mean(ratio, mask),
    }
    return loss, {name: value.detach() for name, value in stats.items()}


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½ · mean over tokens of max((V − R)², (V_clipped − R)²), V_clipped within ±cliprange_value of the old V."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, {"val/clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask).detach()}


@dataclass
class KLController:
    """β of the KL penalty: fixed, or adapted towards `target` nats per response (Ziegler et al. 2019)."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * episodes / self.horizon


# ---------------------------------------------------------------- the text a reward source reads

ANSWER_PROBE = "hf-instruct answer probe"  # stands for an answer, to find what a chat template writes after one


def reward_texts(
    tokenizer: PreTrainedTokenizerBase, prompts: list, completions: list[str], ended: list[bool]
) -> list[str]:
    """Prompt + answer as TRL's RewardTrainer renders them: a conversation with the chat template, plain text followed
    by the EOS token. A cut-off answer stays cut off: text without the EOS, a conversation without the end of turn
    that the template closes every answer with (else the reward model reads it as finished)."""
    texts = []
    for prompt, completion, finished in zip(prompts, completions, ended, strict=True):
        if isinstance(prompt, str):
            texts.append(prompt + completion + (tokenizer.eos_token if finished else ""))
            continue
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
        if not finished:
            probe = [*prompt, {"role": "assistant", "content": ANSWER_PROBE}]
            rendered = tokenizer.apply_chat_template(probe, tokenize=False)
            text = text.removesuffix(rendered[rendered.rindex(ANSWER_PROBE) + len(ANSWER_PROBE) :])
        texts.append(text)
    return texts


def written_texts(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: list
) -> list[str]:
    """The answers as the policy wrote them after their prompts: prompt and answer decoded together, less the prompt's
    text. Decoded alone, a SentencePiece (Metaspace) answer loses its first token's leading space: the reward model
    would read "Answer:The quick" where the policy wrote "Answer: The quick"."""
    texts = []
    for ids, keep, completion in zip(prompt_ids, prompt_mask, completion_ids, strict=True):
        prompt = ids[keep.bool()].tolist()
        before = tokenizer.decode(prompt, skip_special_tokens=True)
        whole = tokenizer.decode(prompt + completion, skip_special_tokens=True)
        alone = whole[len(before) :] if whole.startswith(before) else None
        texts.append(alone if alone is not None else tokenizer.decode(completion, skip_special_tokens=True))
    return texts


# ---------------------------------------------------------------- models


def sequence_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (prompts are left-padded)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def response_logits(
    model: PreTrainedModel | PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int
) -> torch.Tensor:
    """The logits of the positions that predict the last `response_length` tokens (B, R, vocab). Only those go through
    the LM head (`logits_to_keep`): full-vocabulary logits over prompt + response would be most of a step's memory."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=sequence_positions(attention_mask),
        use_cache=False,
        logits_to_keep=response_length + 1,
    ).logits[:, :-1]


def token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A one-output sequence classifier's score at every position (B, T): the per-token values of a value model."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=sequence_positions(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return model.score(hidden).squeeze(-1)


@contextlib.contextmanager
def neutral_generation_defaults(model: PreTrainedModel | PeftModel) -> Iterator[None]:
    """`generate` fills every field that its GenerationConfig leaves None from the model's own `generation_config`
    (repetition_penalty, min_p, no_repeat_ngram_size, suppress_tokens...: Hub chat models ship them), and several
    have no value that switches them off. With a blank one in its place meanwhile, rollouts sample from exactly
    softmax(logits / T), the distribution of PPO's log-probs; the model keeps its own for saving."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    own, base.generation_config = base.generation_config, GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = own


def generate_in_chunks(
    policy: PreTrainedModel | PeftModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generation_config: GenerationConfig,
    chunk_size: int,
) -> torch.Tensor:
    """The sampled responses (B, R) of left-padded prompts, generated `chunk_size` prompts at a time (the KV cache of
    a whole rollout batch can be most of a step's memory) and right-padded to the longest chunk's with the pad id.
    Without sampling the chunks give exactly what one `generate` of the batch gives."""
    prompt_length = prompt_ids.shape[1]
    chunks = [
        policy.generate(
            input_ids=prompt_ids[start : start + chunk_size],
            attention_mask=prompt_mask[start : start + chunk_size],
            generation_config=generation_config,
        )[:, prompt_length:]
        for start in range(0, len(prompt_ids), chunk_size)
    ]
    return pad(list(itertools.chain.from_iterable(chunks)), padding_value=generation_config.pad_token_id)


def disable_dropout(model: nn.Module) -> None:
    """No dropout anywhere, so that π/π_old is exactly 1 before the first update of a rollout: every `nn.Dropout`
    (LoRA's `lora_dropout` too, said in the log) and every float attribute whose name holds "drop", the rates that
    transformers' modelling code passes to `F.dropout` or uses to skip layers (`dropout` in OPT, XGLM, BioGPT and the
    BART family, `activation_dropout`, `attention_dropout`, `attn_dropout_p`, `dropout_p`, `resid_pdrop`,
    `embd_pdrop`, `layerdrop`...). `check_no_dropout` catches a rate read from elsewhere."""
    lora_rates = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            if "lora_dropout" in name and module.p > 0:
                lora_rates.add(module.p)
            module.p = 0.0
        for attribute, value in list(vars(module).items()):
            if "drop" in attribute and isinstance(value, float):
                setattr(module, attribute, 0.0)
    if lora_rates:
        logger.warning(
            f"ppo: lora_dropout {', '.join(map(str, sorted(lora_rates)))} of the LoRA adapter is set to 0 for PPO "
            "(dropout would make π/π_old ≠ 1 before any update)."
        )


def check_no_dropout(model: nn.Module, name: str, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Two train-mode forwards of the same tokens must agree: else some dropout that `disable_dropout` does not know
    (a rate read from the config at run time, a custom layer) would make every ratio π/π_old noisy."""
    device = next(model.parameters()).device
    input_ids = torch.arange(1, 9, device=device)[None, :]
    training = model.training
    model.train()
    with torch.no_grad():
        first, second = forward(input_ids), forward(input_ids)
    model.train(training)
    if not torch.equal(first, second):
        raise ValueError(
            f"{name} ({type(model).__name__}) still drops out in train mode after PPO zeroed every nn.Dropout and "
            "every float `*drop*` attribute: set its remaining dropout rate to 0 (e.g. in its config) before PPO."
        )


# ---------------------------------------------------------------- batches and copies


def copied(model: PreTrainedModel, name: str) -> PreTrainedModel:
    """A copy of a model, for the default reference or value model. Under DeepSpeed ZeRO-3 `from_pretrained` shards the
    weights as it loads them, and a copy of the shards is no model."""
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            f"Under DeepSpeed ZeRO-3 pass {name}: a second model loaded with from_pretrained (hf-instruct ppo does), "
            "as weights sharded at loading cannot be copied."
        )
    return copy.deepcopy(model)


def submodule_state_dict(state_dict: dict | None, name: str) -> dict | None:
    """The entries of one submodule (`policy.`, `value_model.`) of a `PolicyAndValueModel` state dict, unprefixed."""
    if state_dict is None:
        return None
    return {key.removeprefix(f"{name}."): value for key, value in state_dict.items() if key.startswith(f"{name}.")}


def repeated_prompts(inputs: dict, times: int) -> dict:
    """A collated batch of prompts with every prompt `times` times in a row (`num_samples_per_prompt`)."""
    if times == 1:
        return inputs
    return {
        name: value.repeat_interleave(times, dim=0)
        if isinstance(value, torch.Tensor)
        else [item for item in value for _ in range(times)]
        for name, value in inputs.items()
    }
