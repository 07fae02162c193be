"""The InstructGPT model family (self-contained: these two files also ship as Hub remote code)."""

from .configuration_instructgpt import InstructGPTConfig
from .modeling_instructgpt import (
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    InstructGPTModel,
    InstructGPTPreTrainedModel,
)

__all__ = [
    "InstructGPTConfig",
    "InstructGPTPreTrainedModel",
    "InstructGPTModel",
    "InstructGPTForCausalLM",
    "InstructGPTForSequenceClassification",
]
