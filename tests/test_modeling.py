"""The model family against stock transformers: numerics, caches, masks, packing, compile, checkpointing."""

import pytest
import torch
from conftest import tiny_config, tiny_llama_config
from torch.testing import assert_close
from transformers import (
    DynamicCache,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    StaticCache,
)

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification, InstructGPTModel


def ours_and_llama(**overrides):
    """An InstructGPT causal LM and a stock Llama with the same hyper-parameters and the same weights."""
    ours = InstructGPTForCausalLM(tiny_config(**overrides)).eval()
    llama = LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
    llama.load_state_dict(ours.state_dict(), strict=True)  # the weight mapping is the identity
    return ours, llama


def random_ids(batch: int, length: int, low: int = 3) -> torch.Tensor:
    return torch.randint(low, tiny_config().vocab_size, (batch, length))


def left_padded_batch():
    """Two rows of different length, left-padded with pad id 0."""
    long_row, short_row = random_ids(1, 9)[0], random_ids(1, 5)[0]
    input_ids = torch.zeros(2, 9, dtype=torch.long)
    attention_mask = torch.zeros(2, 9, dtype=torch.long)
    input_ids[0], attention_mask[0] = long_row, 1
    input_ids[1, 4:], attention_mask[1, 4:] = short_row, 1
    return input_ids, attention_mask, [long_row, short_row]


# ---------------------------------------------------------------- numerical oracle: stock Llama


@pytest.mark.parametrize("tie", [False, True])
def test_logits_and_loss_match_llama(tie):
    ours, llama = ours_and_llama(tie_word_embeddings=tie)
    input_ids = random_ids(3, 17)
    labels = input_ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        a = ours(input_ids, labels=labels)
        b = llama(input_ids, labels=labels)
    assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    assert_close(a.loss, b.loss, atol=1e-6, rtol=0)


def test_gradients_match_llama():
    ours, llama = ours_and_llama()
    input_ids = random_ids(2, 12)
    ours(input_ids, labels=input_ids).loss.backward()
    llama(input_ids, labels=input_ids).loss.backward()
    llama_grads = dict(llama.named_parameters())
    for name, param in ours.named_parameters():
        assert_close(param.grad, llama_grads[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_sequence_classifier_matches_llama_with_right_padding():
    ours = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    llama = LlamaForSequenceClassification(tiny_llama_config(num_labels=1)).eval()
    llama.load_state_dict(ours.state_dict(), strict=True)
    input_ids = random_ids(2, 8)
    input_ids[1, 5:] = 0
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        assert_close(
            ours(input_ids, attention_mask=attention_mask).logits,
            llama(input_ids, attention_mask=attention_mask).logits,
            atol=1e-5,
            rtol=0,
        )


# ---------------------------------------------------------------- attention backends, padding, caches


def test_eager_matches_sdpa_with_left_padding():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids, attention_mask, _ = left_padded_batch()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(input_ids, attention_mask=attention_mask).logits
        model.set_attn_implementation("sdpa")
        sdpa = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    assert_close(eager[real], sdpa[real], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_flex_attention_matches_sdpa_with_left_padding():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids, attention_mask, _ = left_padded_batch()
    with torch.no_grad():
        sdpa = model(input_ids, attention_mask=attention_mask).logits
        model.set_attn_implementation("flex_attention")
        flex = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    assert_close(flex[real], sdpa[real], atol=1e-5, rtol=0)


def test_left_padded_batch_matches_single_rows():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        batch_logits = model(input_ids, attention_mask=attention_mask).logits
        for i, row in enumerate(rows):
            single = model(row[None]).logits[0]
            assert_close(batch_logits[i, -len(row) :], single, atol=1e-5, rtol=0)


def test_greedy_generation_with_cache_equals_without():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids = random_ids(2, 6)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without_cache = model.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 18)
    torch.testing.assert_close(with_cache, without_cache, rtol=0, atol=0)


def test_left_padded_generation_matches_single_rows():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids, attention_mask, rows = left_padded_batch()
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    batch_out = model.generate(input_ids, attention_mask=attention_mask, **kwargs)[:, -8:]
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch_out[i], model.generate(row[None], **kwargs)[0, -8:], rtol=0, atol=0)


def test_static_cache_equals_dynamic_cache():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids = random_ids(2, 6)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    dynamic = model.generate(input_ids, cache_implementation="dynamic", **kwargs)
    static = model.generate(input_ids, cache_implementation="static", **kwargs)
    torch.testing.assert_close(dynamic, static, rtol=0, atol=0)


def test_cache_objects_in_plain_forward_calls():
    """Prefill + one decode step through an explicit cache equals one full forward, for both cache kinds."""
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids = random_ids(1, 7)
    with torch.no_grad():
        full = model(input_ids).logits[:, -1]
        for cache in (DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=16)):
            model(input_ids[:, :-1], past_key_values=cache, use_cache=True)
            step = model(input_ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
            assert_close(step, full, atol=1e-5, rtol=0, msg=type(cache).__name__)


def test_beam_search_and_sampling_with_several_return_sequences():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids = random_ids(1, 5)
    beams = model.generate(input_ids, num_beams=3, num_return_sequences=3, max_new_tokens=6, pad_token_id=0)
    assert beams.shape[0] == 3 and torch.equal(beams[:, :5], input_ids.expand(3, -1))
    samples = model.generate(
        input_ids, do_sample=True, top_k=0, num_return_sequences=5, max_new_tokens=8, pad_token_id=0, eos_token_id=None
    )
    assert samples.shape == (5, 13)
    assert len({tuple(row.tolist()) for row in samples}) > 1  # five samples from a near-uniform model differ


# ---------------------------------------------------------------- packed rows (padding-free batches)


@pytest.mark.parametrize("use_cache", ["default", True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_separate_runs(use_cache, attn):
    model = InstructGPTForCausalLM(tiny_config(attn_implementation=attn)).eval()
    sequences = [random_ids(1, n)[0] for n in (5, 7, 4)]
    packed = torch.cat(sequences)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    kwargs = {} if use_cache == "default" else {"use_cache": use_cache}
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids, **kwargs).logits[0]
        separate = torch.cat([model(s[None]).logits[0] for s in sequences])
    assert_close(packed_logits, separate, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_with_cu_seq_lens_equals_separate_runs(attn):
    """A padding-free batch as the collators send it (cu_seq_lens_q/k, max_length_q/k): sdpa attends per sequence."""
    model = InstructGPTForCausalLM(tiny_config(attn_implementation=attn))
    sequences = [random_ids(1, n)[0] for n in (5, 7, 1, 4)]
    cu_seq_lens = torch.tensor([0, 5, 12, 13, 17], dtype=torch.int32)
    batch = {
        "input_ids": torch.cat(sequences)[None],
        "position_ids": torch.cat([torch.arange(len(s)) for s in sequences])[None],
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": 7,
        "max_length_k": 7,
    }
    packed_logits = model(**batch).logits[0]
    packed_logits.sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    separate = torch.cat([model(s[None]).logits[0] for s in sequences])
    separate.sum().backward()
    assert_close(packed_logits, separate, atol=1e-5, rtol=0)
    for name, param in model.named_parameters():
        assert_close(packed_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_loss_equals_separate_losses():
    """Training on a packed row gives the token-weighted mean of the per-sequence losses (no cross-talk)."""
    model = InstructGPTForCausalLM(tiny_config()).eval()
    sequences = [random_ids(1, n)[0] for n in (6, 9)]
    packed = torch.cat(sequences)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    labels = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in sequences])[None]
    with torch.no_grad():
        packed_loss = model(packed, position_ids=position_ids, labels=labels).loss
        losses = [model(s[None], labels=s[None]).loss * (len(s) - 1) for s in sequences]
    assert_close(packed_loss, sum(losses) / sum(len(s) - 1 for s in sequences), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- heads, outputs, dropout


def test_logits_to_keep_and_optional_outputs():
    model = InstructGPTForCausalLM(tiny_config(attn_implementation="eager")).eval()
    input_ids = random_ids(2, 10)
    with torch.no_grad():
        full = model(input_ids, output_hidden_states=True, output_attentions=True)
        last = model(input_ids, logits_to_keep=1)
    assert last.logits.shape == (2, 1, model.config.vocab_size)
    assert_close(last.logits[:, 0], full.logits[:, -1], atol=1e-6, rtol=0)
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1
    assert [a.shape for a in full.attentions] == [(2, 4, 10, 10)] * model.config.num_hidden_layers
    upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
    assert all((a[..., upper] == 0).all() for a in full.attentions)  # causal


def test_sequence_classifier_pools_last_attended_token_with_left_or_right_padding():
    """pad == eos (a common setup): the stock pad-id heuristic pools the wrong token; we follow the mask."""
    model = InstructGPTForSequenceClassification(tiny_config(num_labels=1, pad_token_id=2)).eval()
    row = torch.cat([random_ids(1, 5)[0], torch.tensor([2])])  # ends with eos == pad
    right = torch.cat([row, torch.tensor([2, 2])])[None]
    left = torch.cat([torch.tensor([2, 2]), row])[None]
    mask_right = torch.tensor([[1] * 6 + [0, 0]])
    mask_left = torch.tensor([[0, 0] + [1] * 6])
    with torch.no_grad():
        alone = model(row[None], attention_mask=torch.ones(1, 6)).logits  # batch of one, no padding
        assert_close(model(right, attention_mask=mask_right).logits, alone, atol=1e-5, rtol=0)
        assert_close(model(left, attention_mask=mask_left).logits, alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="attention_mask"):
        InstructGPTForSequenceClassification(tiny_config(num_labels=1, pad_token_id=None))(random_ids(2, 4))


def test_hidden_dropout_is_active_in_training_only():
    model = InstructGPTModel(tiny_config(hidden_dropout=0.2))
    input_ids = random_ids(1, 8)
    model.train()
    assert not torch.allclose(model(input_ids).last_hidden_state, model(input_ids).last_hidden_state)
    model.eval()
    assert torch.equal(model(input_ids).last_hidden_state, model(input_ids).last_hidden_state)


def test_tied_and_untied_lm_head():
    tied = InstructGPTForCausalLM(tiny_config(tie_word_embeddings=True))
    untied = InstructGPTForCausalLM(tiny_config(tie_word_embeddings=False))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


# ---------------------------------------------------------------- activation checkpointing, compile


def test_activation_checkpointing_gives_same_gradients():
    model = InstructGPTForCausalLM(tiny_config())
    input_ids = random_ids(2, 12)

    def grads():
        model.zero_grad()
        model(input_ids, labels=input_ids, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = grads()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = grads()
    for name, grad in reference.items():
        assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_matches_eager():
    model = InstructGPTForCausalLM(tiny_config()).eval()
    input_ids = random_ids(2, 16)
    with torch.no_grad():
        expected = model(input_ids, use_cache=False).logits
        compiled = torch.compile(model, fullgraph=True)
        actual = compiled(input_ids, use_cache=False).logits
    assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_trainer_label_smoothing_shifts_labels_as_for_llama(tmp_path):
    """`Trainer(label_smoothing_factor>0)` shifts labels only for models transformers lists as causal LMs by name: ours
    must be listed, or it trains on unshifted labels (4.5859 where Llama's loss is 4.5987)."""
    from transformers import Trainer, TrainingArguments

    ours, llama = ours_and_llama()
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to="none", use_cpu=True)
    input_ids = random_ids(2, 12)
    inputs = {"input_ids": input_ids, "labels": input_ids.clone()}
    with torch.no_grad():
        losses = [Trainer(model=model, args=args).compute_loss(model, dict(inputs)) for model in (ours, llama)]
    assert_close(losses[0], losses[1])
