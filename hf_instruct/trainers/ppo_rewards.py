"""Where PPO's rewards come from, and how they are shaped before GAE: the pieces of `PPOTrainer` that OpenRLHF, verl
and TRL users ask for, kept apart from the algorithm.

- Several reward sources with weights: reward models (each read with its own tokenizer: rewards go through text, so
  only the default value model needs the policy's vocabulary) and reward functions, their scores summed with
  `PPOConfig.reward_weights` (GRPO's `reward_weights`).
- `RemoteRewardModel`: a reward served over HTTP in OpenRLHF's `remote_rm_url` shape.
- `check_reward_tokenizer`: a reward model must read the token ids its tokenizer writes and pool where they end; a
  stock classifier pools on its `config.pad_token_id`, so another pad id scores padding instead of the answer.
- `RunningMoments`: running mean and variance of the reward model's scores across processes, for
  `reward_normalization` (saved in checkpoints, so a resumed run normalises as the uninterrupted one).
"""

import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A rule-based reward: f(prompts, completions, completion_ids=...) -> one float per completion.
RewardFunction = Callable[..., list[float]]
RewardSource = PreTrainedModel | RewardFunction


def as_list(value: object) -> list:
    """One reward source (or tokenizer) or a list of them, as a list."""
    return list(value) if isinstance(value, list | tuple) else [value]


def reward_tokenizer_list(
    reward_processing_class: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase | None] | None,
    reward_model: RewardSource | list[RewardSource],
) -> list[PreTrainedTokenizerBase | None]:
    """The tokenizer of each reward source (None: the policy's), from one tokenizer or a list aligned with the
    sources."""
    sources = as_list(reward_model)
    if not isinstance(reward_processing_class, list | tuple):
        return [reward_processing_class] * len(sources)
    if len(reward_processing_class) != len(sources):
        raise ValueError(
            f"reward_processing_class has {len(reward_processing_class)} tokenizers for {len(sources)} reward "
            "sources: give one per source (None for a function or a model that reads the policy's tokenizer)."
        )
    return list(reward_processing_class)


def check_reward_tokenizer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse a reward model that cannot read what its tokenizer writes: token ids beyond its embedding matrix, or a
    `config.pad_token_id` other than the tokenizer's pad id (stock classifiers pool on the last token that is not the
    pad id, so right padding with another id is pooled as if it were the answer). A missing pad id is set."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"{name} has {rows} token embeddings but its tokenizer writes ids up to {len(tokenizer) - 1}: it was "
            f"trained with another tokenizer. Pass that one as reward_processing_class."
        )
    pad_token_id = model.config.pad_token_id
    if pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # stock classifiers pool by pad id
    elif pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"{name}.config.pad_token_id={pad_token_id} but its tokenizer pads with id {tokenizer.pad_token_id}: it "
            f"would pool its score on padding. Pass the reward model's own tokenizer as reward_processing_class, or "
            f"set {name}.config.pad_token_id = {tokenizer.pad_token_id} if it was trained with this tokenizer."
        )


def source_name(source: RewardSource, index: int) -> str:
    """A short name of a reward source for the logs: the model's folder or class, the function's name."""
    if isinstance(source, nn.Module):
        path = getattr(source.config, "_name_or_path", "") or type(source).__name__
        return f"{index}_{path.rstrip('/').rsplit('/', 1)[-1]}"
    return f"{index}_{getattr(source, '__name__', type(source).__name__)}"


def weighted_scores(columns: list[torch.Tensor], weights: list[float] | None) -> torch.Tensor:
    """Σ_i w_i · scores_i over the reward sources (weights default to 1 each)."""
    weights = weights if weights is not None else [1.0] * len(columns)
    return sum(weight * column for weight, column in zip(weights, columns, strict=True))


class RemoteRewardModel:
    """A reward served over HTTP, as OpenRLHF's `--remote_rm_url`: POST `{"query": [...], "prompts": [...],
    "completions": [...]}` (query = prompt + answer, a conversation rendered with `tokenizer`'s chat template) and
    read one float per query from the JSON answer's `score_key` ("rewards"). A reward function for `PPOTrainer`.

    Requests are cut into `batch_size` queries; each may take `timeout` seconds and is tried `retries` more times."""

    def __init__(
        self,
        url: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        retries: int = 2,
        score_key: str = "rewards",
    ):
        self.url, self.tokenizer, self.batch_size = url, tokenizer, batch_size
        self.timeout, self.retries, self.score_key = timeout, retries, score_key
        self.__name__ = "remote"

    def queries(self, prompts: list, completions: list[str]) -> list[str]:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, str):
                texts.append(prompt + completion)
            elif self.tokenizer is None:
                raise ValueError("RemoteRewardModel got chat prompts: pass tokenizer= to render them as text.")
            else:
                conversation = [*prompt, {"role": "assistant", "content": completion}]
                texts.append(self.tokenizer.apply_chat_template(conversation, tokenize=False))
        return texts

    def __call__(self, prompts: list, completions: list[str], **kwargs) -> list[float]:
        queries = self.queries(prompts, completions)
        scores = []
        for start in range(0, len(queries), self.batch_size):
            rows = slice(start, start + self.batch_size)
            body = {"query": queries[rows], "prompts": prompts[rows], "completions": completions[rows]}
            answer = self._post(body)
            if self.score_key not in answer or len(answer[self.score_key]) != len(body["query"]):
                raise ValueError(
                    f"The reward server at {self.url} answered without {len(body['query'])} scores under "
                    f"{self.score_key!r}: {str(answer)[:200]}"
                )
            scores.extend(float(score) for score in answer[self.score_key])
        return scores

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                attempt += 1
                if attempt > self.retries:
                    raise RuntimeError(f"The reward server at {self.url} did not answer: {error}") from error


@dataclass
class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update, from batch sums that each process
    contributes), for `reward_normalization`."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, count: float, total: float, total_squares: float) -> None:
        """Merge a batch given by its size, sum and sum of squares (summed over processes)."""
        if count == 0:
            return
        batch_mean = total / count
        batch_var = max(total_squares / count - batch_mean**2, 0.0)
        merged = self.count + count
        delta = batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * count + delta**2 * self.count * count / merged) / merged
        self.mean += delta * count / merged
        self.count = merged

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / (math.sqrt(self.var) + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
