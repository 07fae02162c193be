"""Instruction conversations mixed into the pretraining stream ("midtraining"): the model learns the chat format and
to answer from what it knows while it is still learning the corpus, so the SFT stage only has to polish.

Knowledge a model read in pretraining is extractable by questions only if the model saw questions answered while
it learnt: plain pretraining then question tuning answers ~10 % of questions about people it never saw asked about,
mixed training ~87 % (Allen-Zhu & Li, Physics of Language Models 3.1). nanochat's midtraining stage does the same
between base pretraining and SFT. Here any instruction data the SFT stage reads (chat, ShareGPT, Alpaca, Dolly, ...)
is rendered with the chat template and takes `share` of the training tokens; its loss is on the assistant's tokens
only (as in SFT) unless `train_on_prompts`.
"""

import random
from collections.abc import Iterator, Sequence

import datasets
from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from .instructions import chat_tokens, trained_labels
from .text import pack_sequences

Conversation = list[dict[str, str]]


def render_conversations(conversations: Sequence[Conversation], chat_template: str) -> list[str]:
    """The conversations as the chat template writes them, before a tokenizer exists (to train one on them)."""
    return render_jinja_template(list(conversations), chat_template=chat_template)[0]


def pack_mixture(
    texts: datasets.Dataset,
    conversations: Sequence[Conversation],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    share: float,
    seed: int,
    train_on_prompts: bool = False,
    keep_documents_apart: bool = True,
) -> datasets.Dataset:
    """Blocks of `texts` documents and chat-rendered `conversations`, shuffled together, with conversations making up
    `share` of the tokens (drawn in seeded passes over them, as many as the share needs)."""
    if not 0 < share < 1:
        raise ValueError(f"instruction_share must be between 0 and 1 (exclusive), got {share}.")
    if not conversations:
        raise ValueError("instruction_share > 0 needs instruction data: set instruction_files.")
    if isinstance(texts, datasets.IterableDataset):
        raise ValueError("Mixing instructions into a streamed corpus is not supported: set streaming: false.")
    rng = random.Random(seed)
    documents = [
        (ids, ids) for ids in tokenizer(list(texts["text"]), add_special_tokens=False, verbose=False)["input_ids"]
    ]
    wanted = share / (1 - share) * sum(len(ids) + 1 for ids, _ in documents)
    # SFT's rendering: labels on the assistant's turns (every token with train_on_prompts)
    rendered = []
    for messages in conversations:
        input_ids, assistant_mask = chat_tokens(tokenizer, messages)
        rendered.append((input_ids, trained_labels(input_ids, [] if train_on_prompts else [assistant_mask])))
    drawn, tokens = [], 0
    while tokens < wanted:
        for index in rng.sample(range(len(rendered)), len(rendered)):
            drawn.append(rendered[index])
            tokens += len(rendered[index][0]) + 1
            if tokens >= wanted:
                break
    mixture = documents + drawn
    rng.shuffle(mixture)
    return pack_sequences(_items, {"items": mixture}, tokenizer.eos_token_id, block_size, keep_documents_apart)


def _items(items: list[tuple[list[int], list[int]]]) -> Iterator[tuple[list[int], list[int]]]:
    yield from items
