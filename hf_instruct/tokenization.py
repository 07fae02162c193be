"""Train a byte-level BPE tokenizer with a training-compatible ChatML chat template.

Byte-level BPE never produces an unknown token, so any UTF-8 text round-trips. The chat template marks every
assistant turn, *including its end-of-turn token*, with `{% generation %}`, so `apply_chat_template(...,
return_assistant_tokens_mask=True)`, TRL's `assistant_only_loss=True` and our collator train the model to stop.
"""

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"  # ends a document in pretraining text
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends a chat turn: generation stops here
# Their ids are 0..4, matching InstructGPTConfig's pad/bos/eos defaults.
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IM_START, IM_END]

# ChatML, with one difference: every turn's content starts with a space (and is trimmed, so a decoded answer that
# already starts with one renders the same). Byte-level BPE gives " word" and a word at the start of a line different
# ids; with the space, a word the user writes and the same word in the answer are one token, so a model copies it
# instead of learning every word twice (a small model's instruction accuracy depends on it; docs/research-log.md).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ ' ' + (message['content'] | trim) + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n ' + (message['content'] | trim) + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (any iterable of strings, e.g. a `datasets` column).

    The result has `<|pad|>`, `<|bos|>`, `<|endoftext|>` (eos), `<|im_start|>`, `<|im_end|>` at ids 0-4 and the ChatML
    chat template above; save it with `save_pretrained` and load it back with `AutoTokenizer`.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"`vocab_size` must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special "
            f"tokens), got {vocab_size}."
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)  # exact offsets for assistant masks
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    total = len(texts) if hasattr(texts, "__len__") else None
    bpe.train_from_iterator(_checked(texts, total, show_progress), trainer=trainer, length=total)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _checked(texts: Iterable[str], total: int | None, show_progress: bool) -> Iterator[str]:
    """Yields the texts with a progress bar, refusing non-strings with the offending index."""
    for index, text in enumerate(tqdm(texts, total=total, desc="Training tokenizer", disable=not show_progress)):
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer: text #{index} is a {type(text).__name__}, not a str.")
        yield text


def end_of_turn_token_id(tokenizer) -> int | None:
    """The token that closes an assistant turn in the chat template: the last one of its `{% generation %}` span."""
    if tokenizer.chat_template is None:
        return None
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = tokenizer.apply_chat_template(probe, return_dict=True, return_assistant_tokens_mask=True)
    trained = [token for token, bit in zip(rendered["input_ids"], rendered["assistant_masks"], strict=True) if bit]
    return trained[-1] if trained else None
