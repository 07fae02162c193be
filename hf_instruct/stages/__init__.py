"""The training stages. Each is one `run_<stage>(config) -> output_dir` used by recipes, the CLI and the pipeline."""

from .common import parse_config
from .pretrain import PretrainStageConfig, run_pretrain
from .reward import RewardStageConfig, run_reward
from .sft import SFTStageConfig, run_sft

STAGES = {
    "pretrain": (PretrainStageConfig, run_pretrain),
    "sft": (SFTStageConfig, run_sft),
    "reward": (RewardStageConfig, run_reward),
}

__all__ = [
    "STAGES",
    "PretrainStageConfig",
    "RewardStageConfig",
    "SFTStageConfig",
    "parse_config",
    "run_pretrain",
    "run_reward",
    "run_sft",
]
