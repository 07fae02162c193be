"""Trainers that the HF stack does not ship: PPO with the pretraining mix (TRL 1.x removed its PPO trainer)."""

from .ppo import KLController, PPOConfig, PPOTrainer
from .ppo_rewards import RemoteRewardModel

__all__ = ["KLController", "PPOConfig", "PPOTrainer", "RemoteRewardModel"]
