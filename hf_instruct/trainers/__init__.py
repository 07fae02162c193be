"""Trainers that the HF stack does not ship: PPO with the pretraining mix (TRL 1.x removed its PPO trainer), and TRL's
reward trainer with a prompt's comparisons trained together."""

from .ppo_config import PPOConfig
from .ppo_rewards import RemoteRewardModel
from .ppo_trainer import PPOTrainer
from .ppo_utils import KLController
from .reward import GroupedBatchSampler, GroupedRewardTrainer

__all__ = [
    "GroupedBatchSampler",
    "GroupedRewardTrainer",
    "KLController",
    "PPOConfig",
    "PPOTrainer",
    "RemoteRewardModel",
]
