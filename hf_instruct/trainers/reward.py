"""TRL's `RewardTrainer`, training all comparisons of a prompt together as InstructGPT did.

InstructGPT's labelers ranked K answers per prompt, which gives C(K, 2) comparisons that share their answers. Shuffled
as independent rows, each answer is seen K − 1 times per epoch in different steps, and the reward model overfits
after one epoch; so the paper trains "on all C(K, 2) comparisons from each prompt as a single batch element", each
answer read once per epoch (Ouyang et al. 2022, section 3.5). `GroupedRewardTrainer` does that when the comparisons
carry a `group` column (the prompt's index, as `hf-instruct collect_comparisons` writes it):

- **Batches of whole groups** (`GroupedBatchSampler`): a batch holds whole groups, at most
  `per_device_train_batch_size` pairs. A group with more pairs than that is cut into pieces of that size, each in a
  batch of its own (as many pieces as it needs; the last may share a batch with other groups), and each piece then
  counts as one prompt of its batch. The packing (which sizes share a batch) is made once, so every epoch has the same
  number of batches; each epoch (seeded by `seed` and the epoch) deals the groups of each size to the packing's
  places at random and shuffles the batches, so which prompts share a batch changes. Evaluation batches are packed
  the same way, in dataset order.
- **Each prompt weighs the same**: the loss is the mean over the batch's groups of the mean loss of each group's pairs,
  not the mean over pairs, so a prompt with six distinct answers counts as much as one with three.

Rows without `group` train exactly as TRL's `RewardTrainer` does (every method hands them to it).
"""

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from trl import RewardTrainer

GROUP = "group"


class GroupedBatchSampler:
    """Batches of row indices that keep the rows of a group (equal values of `groups`) together; see the module
    docstring for how groups larger than `batch_size` are cut and how epochs differ. A batch sampler for
    `DataLoader(batch_sampler=...)`; `batch_size` is None because batches vary in size (accelerate then deals whole
    batches to the processes)."""

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True):
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.batch_size, self.drop_last = None, False
        rows = defaultdict(list)  # group -> its row indices, groups in order of first appearance
        for index, group in enumerate(groups):
            rows[group].append(index)
        self.pieces = [
            indices[start : start + batch_size]
            for indices in rows.values()
            for start in range(0, len(indices), batch_size)
        ]
        self.layout = pack(sorted((len(piece) for piece in self.pieces), reverse=True), batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.layout)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        by_size = defaultdict(list)  # size -> the pieces of that size, dealt to the layout's places of that size
        for piece in self.pieces:
            by_size[len(piece)].append(piece)
        if self.shuffle:
            for pieces in by_size.values():
                rng.shuffle(pieces)
        dealt = {size: iter(pieces) for size, pieces in by_size.items()}
        batches = [[index for size in sizes for index in next(dealt[size])] for sizes in self.layout]
        if self.shuffle:
            rng.shuffle(batches)
        yield from batches


def pack(sizes: list[int], capacity: int) -> list[list[int]]:
    """Best-fit packing of `sizes` (each at most `capacity`) into bins of `capacity`: each size goes to the open bin
    it fills most tightly, else a new one. Returns the sizes in each bin."""
    bins: list[list[int]] = []
    free = defaultdict(list)  # room left -> the bins with that much room
    for size in sizes:
        room = next((room for room in range(size, capacity + 1) if free[room]), None)
        if room is None:
            bins.append([])
            target = len(bins) - 1
        else:
            target = free[room].pop()
        bins[target].append(size)
        free[(room if room is not None else capacity) - size].append(target)
    return bins


def grouped_loss(per_pair: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The mean over groups of the mean of each group's `per_pair` losses: every prompt weighs the same."""
    _, index = torch.unique(groups, return_inverse=True)
    count = per_pair.new_zeros(int(index.max()) + 1).index_add_(0, index, torch.ones_like(per_pair))
    total = torch.zeros_like(count).index_add_(0, index, per_pair)
    return (total / count).mean()


class WithGroups:
    """A collator that hands the rows without `group` to `collator` and adds the batch's group ids as a tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator([{k: v for k, v in example.items() if k != GROUP} for example in examples])
        batch[GROUP] = torch.tensor([example[GROUP] for example in examples])
        return batch


class GroupedRewardTrainer(RewardTrainer):
    """`RewardTrainer` that trains a prompt's comparisons together when they carry a `group` column (module
    docstring); otherwise exactly `RewardTrainer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grouped = has_groups(self.train_dataset)
        if self.grouped:
            self.data_collator = WithGroups(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if getattr(self, "grouped", False) and GROUP not in self._signature_columns:
            self._signature_columns.append(GROUP)

    def get_train_dataloader(self) -> DataLoader:
        if not self.grouped:
            return super().get_train_dataloader()
        return self._grouped_dataloader(self.train_dataset, self._train_batch_size, "Training", shuffle=True)

    def get_eval_dataloader(self, eval_dataset: str | datasets.Dataset | None = None) -> DataLoader:
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if not self.grouped or not has_groups(dataset):
            return super().get_eval_dataloader(eval_dataset)
        return self._grouped_dataloader(dataset, self.args.eval_batch_size, "Evaluation", shuffle=False)

    def _grouped_dataloader(self, dataset: datasets.Dataset, batch_size: int, description: str, shuffle: bool):
        sampler = GroupedBatchSampler(dataset[GROUP], batch_size, seed=self.args.seed, shuffle=shuffle)
        dataset = self._remove_unused_columns(dataset, description=description)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        groups = inputs.pop(GROUP, None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if groups is not None:  # TRL's metrics stand; the loss is the per-prompt mean instead of the per-pair mean
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            per_pair = -F.logsigmoid(chosen - rejected - inputs.get("margin", 0.0))
            loss = grouped_loss(per_pair, groups)
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def has_groups(dataset) -> bool:
    return isinstance(dataset, datasets.Dataset) and GROUP in dataset.column_names
