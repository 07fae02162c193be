"""The training stages. Each is one `run_<stage>(config) -> output_dir` used by recipes, the CLI and the pipeline."""

from .collect_comparisons import CollectComparisonsConfig, run_collect_comparisons
from .common import parse_config
from .dpo import DPOStageConfig, run_dpo
from .grpo import GRPOStageConfig, run_grpo
from .ppo import PPOStageConfig, run_ppo
from .pretrain import PretrainStageConfig, run_pretrain
from .reward import RewardStageConfig, run_reward
from .sft import SFTStageConfig, run_sft

STAGES = {
    "pretrain": (PretrainStageConfig, run_pretrain),
    "sft": (SFTStageConfig, run_sft),
    "collect_comparisons": (CollectComparisonsConfig, run_collect_comparisons),
    "reward": (RewardStageConfig, run_reward),
    "ppo": (PPOStageConfig, run_ppo),
    "dpo": (DPOStageConfig, run_dpo),
    "grpo": (GRPOStageConfig, run_grpo),
}

__all__ = [
    "STAGES",
    "CollectComparisonsConfig",
    "DPOStageConfig",
    "GRPOStageConfig",
    "PPOStageConfig",
    "PretrainStageConfig",
    "RewardStageConfig",
    "SFTStageConfig",
    "parse_config",
    "run_collect_comparisons",
    "run_dpo",
    "run_grpo",
    "run_ppo",
    "run_pretrain",
    "run_reward",
    "run_sft",
]
