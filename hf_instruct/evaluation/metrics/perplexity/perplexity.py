"""Perplexity of texts under a causal language model: how surprised the model is by each text, padding excluded."""

import math

import datasets
import evaluate
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import hf_instruct  # noqa: F401  (registers the `instructgpt` model type, so no trust_remote_code is needed)
except ImportError:
    pass

_DESCRIPTION = "Per-text perplexity: exp of the mean negative log-likelihood of the text's tokens under a causal LM."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score.
    model_id (str): folder (or Hub id) of a causal LM and its tokenizer.
    batch_size (int, default 8): texts per forward pass.
    max_length (int, optional): truncate each text to this many tokens (start token included).
    add_start_token (bool, default False): prepend the tokenizer's BOS token, so the first word is scored too.
Returns:
    perplexities (list of float): one per text.
    mean_perplexity (float): their mean.
Example:
    >>> metric = evaluate.load(metric_path("perplexity"))
    >>> metric.compute(predictions=["The quick brown fox."], model_id="runs/pretrain")["mean_perplexity"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    @torch.no_grad()
    def _compute(self, predictions, model_id, batch_size=8, max_length=None, add_start_token=False):
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        if add_start_token and tokenizer.bos_token_id is None:
            raise ValueError(f"add_start_token=True, but the tokenizer of {model_id} has no BOS token.")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(model_id).to(device).eval()
        start = [tokenizer.bos_token_id] if add_start_token else []
        texts = [start + ids for ids in tokenizer(predictions, add_special_tokens=False)["input_ids"]]
        if max_length is not None:
            texts = [ids[:max_length] for ids in texts]
        for index, ids in enumerate(texts):
            if len(ids) < 2:
                raise ValueError(f"Text #{index} has {len(ids)} token(s); perplexity needs 2 (try add_start_token).")
        perplexities = []
        for first in range(0, len(texts), batch_size):
            batch = texts[first : first + batch_size]
            # Right padding keeps each text's positions; the mask keeps pads out of attention and out of the mean.
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            target_mask = mask[:, 1:]
            mean_nll = (nll * target_mask).sum(1) / target_mask.sum(1)
            perplexities += [math.exp(value) for value in mean_nll.tolist()]
        return {"perplexities": perplexities, "mean_perplexity": sum(perplexities) / len(perplexities)}
