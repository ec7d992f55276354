"""Depth growth starts the deeper model as the same function as its source."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r2r.testbed.grow import grow_depth


def _llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_grown_model_computes_the_source_function() -> None:
    source, grown = _llama(2, seed=0), _llama(6, seed=1)
    ids = torch.randint(0, 64, (3, 17), generator=torch.Generator().manual_seed(2))
    before = grown(input_ids=ids).logits
    grow_depth(grown, source)
    expected = source(input_ids=ids).logits
    assert not torch.allclose(before, expected, atol=1e-3)  # the target really was another function
    torch.testing.assert_close(grown(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    # the new blocks keep their random attention and MLP inputs: training can move them off the identity
    assert grown.model.layers[1].self_attn.q_proj.weight.abs().sum() > 0


def test_new_blocks_learn() -> None:
    source, grown = _llama(2, seed=0), _llama(4, seed=1)
    grow_depth(grown, source)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    grown.train()
    grown(input_ids=ids, labels=ids).loss.backward()
    assert grown.model.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0


def test_depth_must_be_a_whole_multiple() -> None:
    with pytest.raises(ValueError, match="whole multiple"):
        grow_depth(_llama(4, seed=1), _llama(3, seed=0))
