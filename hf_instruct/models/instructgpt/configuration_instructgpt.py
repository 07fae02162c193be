"""InstructGPT model configuration.

A transformers v5 dataclass config with the standard field names, so every HF tool (Trainer, TRL, PEFT,
accelerate, the Hub) reads it like a Llama config. This file is copied verbatim into saved checkpoints as remote
code: it must import nothing from `hf_instruct`.
"""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RopeParameters

# Written into every saved config so that `trust_remote_code=True` can load any head from any checkpoint
# (e.g. a reward model initialised from an SFT checkpoint) on a machine without hf_instruct.
AUTO_MAP = {
    "AutoConfig": "configuration_instructgpt.InstructGPTConfig",
    "AutoModel": "modeling_instructgpt.InstructGPTModel",
    "AutoModelForCausalLM": "modeling_instructgpt.InstructGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_instructgpt.InstructGPTForSequenceClassification",
}


@strict
class InstructGPTConfig(PreTrainedConfig):
    r"""
    Configuration of an InstructGPT decoder: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.

    The defaults describe a ~6 M parameter model that trains on a laptop CPU. Field names and meanings are those of
    `LlamaConfig`, plus `hidden_dropout` (residual dropout, 0.2 in InstructGPT's SFT).

    ```python
    >>> from hf_instruct import InstructGPTConfig, InstructGPTForCausalLM
    >>> model = InstructGPTForCausalLM(InstructGPTConfig(num_hidden_layers=2))
    ```
    """

    model_type = "instructgpt"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 1024
    rope_parameters: RopeParameters | dict | None = None
    rms_norm_eps: float | int = 1e-5
    initializer_range: float | int = 0.02
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads and self.hidden_size % self.num_attention_heads == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.auto_map = {**AUTO_MAP, **(kwargs.pop("auto_map", None) or {})}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Refuse shapes the model cannot be built with, naming the field and the fix."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if name == "head_dim" and value is None:  # left unset by __post_init__: no whole head size exists
                raise ValueError(
                    f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                    f"({self.num_attention_heads}) unless `head_dim` is set: choose e.g. num_attention_heads="
                    f"{_nearest_divisor(self.hidden_size, self.num_attention_heads)}."
                )
            if value is None or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads}): each key/value head serves a whole group of query heads; choose e.g. "
                f"num_key_value_heads={_nearest_divisor(self.num_attention_heads, self.num_key_value_heads)}."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"`head_dim` ({self.head_dim}) must be even: RoPE rotates pairs of channels.")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"`rms_norm_eps` must be positive, got {self.rms_norm_eps!r}.")

    def validate_rope_type(self):
        """Stock configs only warn on an unknown RoPE type and then fail at model build time; fail here instead."""
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        known = ["default", *ROPE_INIT_FUNCTIONS]
        if rope_type not in known:
            raise ValueError(f"`rope_parameters['rope_type']` is {rope_type!r}; use one of {known}.")


def _nearest_divisor(number: int, wanted: int) -> int:
    """The divisor of `number` closest to `wanted`, to suggest in error messages."""
    return min((d for d in range(1, number + 1) if number % d == 0), key=lambda d: (abs(d - wanted), d))


__all__ = ["InstructGPTConfig"]
