"""InstructGPT decoder: the model behind every hf-instruct stage.

A pre-norm decoder-only Transformer with the same maths as Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU),
so Llama-architecture weights load one to one, plus residual dropout and two fixes that matter for instruction
tuning: packed rows never attend across sequence boundaries (also with the default `use_cache=True`), and the
sequence classifier pools the last *attended* token, which stays right when the pad token is the EOS token.

This file is copied verbatim into saved checkpoints as remote code: it imports only torch, transformers and its
sibling configuration file.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_instructgpt import InstructGPTConfig

logger = logging.get_logger(__name__)


class InstructGPTRMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 for stability under bf16/fp16."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class InstructGPTRotaryEmbedding(nn.Module):
    """Computes the RoPE cos/sin tables once per forward, shared by every layer."""

    def __init__(self, config: InstructGPTConfig):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: InstructGPTConfig, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # (B, T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hs)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Rotates query and key channels by their position; cos/sin are (B, T, hs) and broadcast over heads."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): shares each key/value head with its group of query heads."""
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)  # (B, nh, T, hs)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def sdpa_attention_per_sequence(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """Padding-free rows on sdpa: causal attention inside each packed sequence (bounds `cu_seq_lens`).

    The generic path builds a dense (N, N) block-diagonal mask over the whole row and attends everywhere under it;
    this costs sum(len_i^2) instead of N^2, which is what makes padding-free batches pay off without flash attention.
    The row is cut with `split` rather than one slice per sequence: the backward of a slice writes its gradient into a
    zero tensor of the whole row, so n slices cost n full-row fills and additions, while split's backward is one cat.
    """
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    lengths = cu_seq_lens.diff().tolist()
    outputs = [
        nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (B, T, nh, hs)


class InstructGPTAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads; the kernel comes from `config._attn_implementation`."""

    def __init__(self, config: InstructGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, nh, T, hs)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, n_kv, T, hs)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, n_kv, T, hs)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        dropout = self.attention_dropout if self.training else 0.0
        is_padding_free = kwargs.get("cu_seq_lens_q") is not None and attention_mask is None
        no_past = key_states.shape[-2] == query_states.shape[-2]  # the keys are this row's only
        if is_padding_free and no_past and self.config._attn_implementation == "sdpa":
            attn_output, attn_weights = sdpa_attention_per_sequence(
                self, query_states, key_states, value_states, kwargs["cu_seq_lens_q"], self.scaling, dropout
            )
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                attention_mask,
                dropout=dropout,
                scaling=self.scaling,
                **kwargs,
            )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # (B, T, nh * hs)
        return self.o_proj(attn_output), attn_weights


class InstructGPTMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: InstructGPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN["silu"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class InstructGPTDecoderLayer(GradientCheckpointingLayer):
    """x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, config: InstructGPTConfig, layer_idx: int):
        super().__init__()
        self.self_attn = InstructGPTAttention(config, layer_idx)
        self.mlp = InstructGPTMLP(config)
        self.input_layernorm = InstructGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = InstructGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hidden_dropout = config.hidden_dropout

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + self.residual_dropout(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.residual_dropout(mlp_output)

    def residual_dropout(self, x: torch.Tensor) -> torch.Tensor:
        # A plain branch rather than an nn.Dropout module: generation calls this twice per layer per token.
        if self.training and self.hidden_dropout > 0:
            return nn.functional.dropout(x, p=self.hidden_dropout, training=True)
        return x


class InstructGPTPreTrainedModel(PreTrainedModel):
    config: InstructGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InstructGPTDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": InstructGPTDecoderLayer,
        "attentions": InstructGPTAttention,
    }


class InstructGPTModel(InstructGPTPreTrainedModel):
    """The decoder stack without a head: token ids -> final normalised hidden states."""

    _auto_class = "AutoModel"

    def __init__(self, config: InstructGPTConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [InstructGPTDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = InstructGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InstructGPTRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        # `create_causal_mask` recognises packed rows (position_ids restarting at 0, no attention mask) only when it
        # gets no cache. An empty dynamic cache yields the same mask sizes as no cache, so hide it: otherwise the
        # default `use_cache=True` silently lets packed sequences attend to each other (as in stock Llama).
        mask_cache = past_key_values
        if mask_cache is not None and not mask_cache.is_compileable and mask_cache.get_seq_length() == 0:
            mask_cache = None
        is_padding_free = kwargs.get("cu_seq_lens_q") is not None and attention_mask is None
        if is_padding_free and mask_cache is None and self.config._attn_implementation == "sdpa":
            causal_mask = None  # each packed sequence attends causally to itself (see sdpa_attention_per_sequence)
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                past_key_values=mask_cache,
                position_ids=position_ids,
            )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class InstructGPTForCausalLM(InstructGPTPreTrainedModel, GenerationMixin):
    """Decoder + LM head (tied to the token embedding when `config.tie_word_embeddings`)."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: InstructGPTConfig):
        super().__init__(config)
        self.model = InstructGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # not saved (it is the embedding): the Trainer then re-ties it on resume
            self._keys_to_ignore_on_save = ["lm_head.weight"]
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (shifted inside the loss); `-100` marks positions that are not trained.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last `logits_to_keep` positions (0 = all), or for these indices.
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class InstructGPTForSequenceClassification(InstructGPTPreTrainedModel):
    """Decoder + linear `score` head on the last real token: the reward model (and PPO value model) class.

    The pooled position is the last one the attention mask keeps, which is right for left and right padding even
    when the pad token is also the EOS token; without a mask it falls back to the last non-pad token.
    """

    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config: InstructGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        # Built directly, not through AutoModel.from_config, so remote-code loading works without the plugin.
        self.model = InstructGPTModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        last_token = self.last_token_index(input_ids, attention_mask, batch_size=logits.shape[0])
        pooled_logits = logits[torch.arange(logits.shape[0], device=logits.device), last_token]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def last_token_index(
        self, input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor | int:
        """Index of the last real token of each row: from the attention mask, else the pad token, else -1."""
        if attention_mask is not None and attention_mask.ndim == 2:
            keep = attention_mask.to(torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            keep = (input_ids != self.config.pad_token_id).to(torch.int32)
        elif batch_size == 1:
            return -1
        else:
            raise ValueError(
                "Cannot find the last token of each row of a batch without an `attention_mask` (or `input_ids` and "
                "`config.pad_token_id`): pass the attention mask from the tokenizer."
            )
        positions = torch.arange(keep.shape[-1], device=keep.device, dtype=torch.int32)
        return (positions * keep).argmax(-1)


__all__ = [
    "InstructGPTPreTrainedModel",
    "InstructGPTModel",
    "InstructGPTForCausalLM",
    "InstructGPTForSequenceClassification",
]
