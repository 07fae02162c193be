"""Answering chat prompts in batches, the way a chat model is served: the chat template with the generation prompt,
left padding, the KV cache, and a stop at the end of the assistant turn. A base model is asked in plain text instead
("Question: ...\nAnswer:", the format its pretraining corpus holds), its answer cut at the end of the paragraph."""

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..checkpoints import NO_SUCH_FOLDER, missing_folder, saved_model_problem
from ..data.suite import plain_dialogue
from ..data.suite.corpus import QUESTION
from ..tokenization import end_of_turn_token_id

Conversation = list[dict[str, str]]


def load_chat_model(path: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved causal LM or LoRA adapter and its tokenizer, in eval mode; a clear error for an incomplete folder or
    one without a chat template."""
    if missing_folder(path):
        raise FileNotFoundError(f"{path}: {NO_SUCH_FOLDER}.")
    if Path(path).is_dir() and (problem := saved_model_problem(path)):
        raise ValueError(f"{path}: {problem}.")
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(
            f"The tokenizer of {path} has no chat template, so it cannot be asked instructions: evaluate a model "
            "saved by hf-instruct sft (or later), or give its tokenizer a chat template."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End of the assistant turn, end of document, and whatever the model's generation config stops at."""
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({*configured, tokenizer.eos_token_id, end_of_turn_token_id(tokenizer)} - {None})


class SeededSampling(LogitsProcessor):
    """Samples each row's next token from softmax(scores / temperature) with that row's own `torch.Generator`, and
    leaves only that token possible, so `generate`'s own sampling (at temperature 1) picks it. An answer then depends
    on its seed, not on the process's RNG or on the other prompts of its batch (`generate`'s sampling draws every row
    from the one global generator); only the padding its batch adds can move a probability by a rounding error."""

    def __init__(self, seeds: list[int], temperature: float = 1.0):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # inverse transform sampling: one uniform draw per row (a `multinomial` per row is 15x slower)
        cumulative = torch.softmax(scores.double() / self.temperature, dim=-1).cumsum(dim=-1).cpu()
        draws = torch.cat([torch.rand(1, generator=generator, dtype=torch.float64) for generator in self.generators])
        tokens = torch.searchsorted(cumulative, (draws * cumulative[:, -1]).unsqueeze(1), right=True)
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(scores)), tokens.squeeze(1).clamp(max=scores.shape[-1] - 1).to(scores.device)] = 0.0
        return chosen


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    show_progress: bool = True,
    prompt_format: str = "chat",
    seeds: list[int] | None = None,
) -> list[list[str]]:
    """The assistant's next turn for each conversation (`num_return_sequences` answers each), greedy by default;
    `prompt_format="plain"` asks in question-and-answer text (see `plain_dialogue`) instead of the chat template.
    With `seeds` (one per answer, conversation-major) each answer is sampled at `temperature` from its own seeded
    generator (`SeededSampling`): an answer depends on its seed and batch, not on what the process sampled before."""
    if prompt_format not in ("chat", "plain"):
        raise ValueError(f"prompt_format must be 'chat' or 'plain', got {prompt_format!r}.")
    if seeds is not None and len(seeds) != len(conversations) * num_return_sequences:
        raise ValueError(f"seeds: one per answer ({len(conversations) * num_return_sequences}), got {len(seeds)}.")
    stops = stop_token_ids(model, tokenizer)
    answers = []
    batches = range(0, len(conversations), batch_size)
    for start in tqdm(batches, desc="Generating", unit="batch", disable=not show_progress):
        prompts = [
            plain_dialogue(conversation)
            if prompt_format == "plain"
            else tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            for conversation in conversations[start : start + batch_size]
        ]
        inputs = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
        sampling = None
        if seeds is not None:  # `generate` samples the one token `SeededSampling` left, at temperature 1
            rows = slice(start * num_return_sequences, (start + batch_size) * num_return_sequences)
            sampling = LogitsProcessorList([SeededSampling(seeds[rows], temperature)])
        output = model.generate(
            **inputs.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample or sampling is not None,
            logits_processor=sampling,
            temperature=(1.0 if sampling is not None else temperature) if do_sample or sampling else None,
            top_p=None,
            top_k=None,
            num_return_sequences=num_return_sequences,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        if prompt_format == "plain":  # the answer's paragraph: a base model goes on with the next question
            texts = [text.split("\n\n")[0].split(f"\n{QUESTION}")[0] for text in texts]
        texts = [text.strip() for text in texts]
        answers.extend(texts[i : i + num_return_sequences] for i in range(0, len(texts), num_return_sequences))
    return answers
