"""Trainers that the HF stack does not ship: PPO with the pretraining mix (TRL 1.x removed its PPO trainer), and TRL's
reward trainer with a prompt's comparisons trained together."""

from .ppo import KLController, PPOConfig, PPOTrainer
from .ppo_rewards import RemoteRewardModel
from .reward import GroupedBatchSampler, GroupedRewardTrainer

__all__ = [
    "GroupedBatchSampler",
    "GroupedRewardTrainer",
    "KLController",
    "PPOConfig",
    "PPOTrainer",
    "RemoteRewardModel",
]
