"""hf-instruct: build an InstructGPT-style model with the Hugging Face tools you already use.

Importing the package registers the `instructgpt` model type with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(path)` works for hf-instruct checkpoints without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)
from transformers.models.auto import modeling_auto

from ._version import __version__
from .collator import DataCollatorForInstructionTuning
from .hub import push_to_hub
from .model_card import use_model_card
from .models.instructgpt import (
    InstructGPTConfig,
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    InstructGPTModel,
    InstructGPTPreTrainedModel,
)
from .tokenization import train_tokenizer
from .trainers import PPOConfig, PPOTrainer

AutoConfig.register(InstructGPTConfig.model_type, InstructGPTConfig, exist_ok=True)
AutoModel.register(InstructGPTConfig, InstructGPTModel, exist_ok=True)
AutoModelForCausalLM.register(InstructGPTConfig, InstructGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(InstructGPTConfig, InstructGPTForSequenceClassification, exist_ok=True)
# Parts of transformers classify a model by its class name in these static tables rather than through the Auto
# classes (`Trainer`'s label smoothing shifts labels only for names listed as causal LMs; its common model tests read
# them too). Listing ours there changes no lookup: the Auto classes find a registered model first.
for table, class_name in (
    (modeling_auto.MODEL_MAPPING_NAMES, InstructGPTModel.__name__),
    (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, InstructGPTForCausalLM.__name__),
    (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, InstructGPTForSequenceClassification.__name__),
):
    table.setdefault(InstructGPTConfig.model_type, class_name)

__all__ = [
    "__version__",
    "InstructGPTConfig",
    "InstructGPTPreTrainedModel",
    "InstructGPTModel",
    "InstructGPTForCausalLM",
    "InstructGPTForSequenceClassification",
    "DataCollatorForInstructionTuning",
    "PPOConfig",
    "PPOTrainer",
    "train_tokenizer",
    "push_to_hub",
    "use_model_card",
]
