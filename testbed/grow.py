"""Start a deeper testbed model from a trained shallower one as the same function (depth growth).

Each source layer is copied to the start of a group of `factor` target layers; the other
layers of the group keep their random init except their attention and MLP output
projections, which start at zero. A Llama block adds its attention and MLP outputs to the
residual stream, so a block with zero output projections is the identity and the grown
model computes exactly what the source computes (tested). Training then moves the new
blocks off zero (the gradient of a zero output projection is not zero). This is how the
testbed gets an LLM whose decode step costs many SLM steps without training a deep model
from scratch, which this machine's two cores cannot do to the source's accuracy in a session
(a 24-layer model trained from scratch for 115 minutes reached 79% / 33%, docs/perf-notes.md).
"""
from __future__ import annotations

import torch


def grow_depth(model: torch.nn.Module, source: torch.nn.Module) -> None:
    """Load `source` (a LlamaForCausalLM) into the deeper `model` of the same width, in place."""
    src_layers, dst_layers = source.model.layers, model.model.layers
    factor, rest = divmod(len(dst_layers), len(src_layers))
    if rest or factor < 1:
        raise ValueError(f"cannot grow {len(src_layers)} layers into {len(dst_layers)}: need a whole multiple")
    outer = {k: v for k, v in source.state_dict().items() if not k.startswith("model.layers.")}
    missing, unexpected = model.load_state_dict(outer, strict=False)
    if unexpected or any(not k.startswith("model.layers.") for k in missing):
        raise ValueError(f"source and target differ beyond depth (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        for i, layer in enumerate(src_layers):
            dst_layers[i * factor].load_state_dict(layer.state_dict())
            for new in dst_layers[i * factor + 1 : (i + 1) * factor]:
                new.self_attn.o_proj.weight.zero_()
                new.mlp.down_proj.weight.zero_()
