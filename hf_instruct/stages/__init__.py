"""The training stages. Each is one `run_<stage>(config) -> output_dir` used by recipes, the CLI and the pipeline, and
one `Stage` declaration at the end of its file; `STAGES` lists them (a new stage is its file and one entry here)."""

from .collect_comparisons import COLLECT_COMPARISONS, CollectComparisonsConfig, run_collect_comparisons
from .dpo import DPO, DPOStageConfig, run_dpo
from .grpo import GRPO, GRPOStageConfig, run_grpo
from .parsing import parse_config
from .ppo import PPO, PPOStageConfig, run_ppo
from .pretrain import PRETRAIN, PretrainStageConfig, run_pretrain
from .reward import REWARD, RewardStageConfig, run_reward
from .sft import SFT, SFTStageConfig, run_sft
from .stage import Stage

STAGES = {stage.name: stage for stage in (PRETRAIN, SFT, COLLECT_COMPARISONS, REWARD, PPO, DPO, GRPO)}

__all__ = [
    "STAGES",
    "CollectComparisonsConfig",
    "DPOStageConfig",
    "GRPOStageConfig",
    "PPOStageConfig",
    "PretrainStageConfig",
    "RewardStageConfig",
    "SFTStageConfig",
    "Stage",
    "parse_config",
    "run_collect_comparisons",
    "run_dpo",
    "run_grpo",
    "run_ppo",
    "run_pretrain",
    "run_reward",
    "run_sft",
]
