"""Small graphs of single encoder components, built from the same functions as the full model,
so `maxwhisper.selfcheck` can compare each with openai-whisper's PyTorch module."""

from __future__ import annotations

from max.dtype import DType
from max.graph import Graph, TensorType

from .encoder import conv_stem, encoder_block, extensions, self_attention
from .layers import WeightBank
from .model import MaxWhisper


def build_component(model: MaxWhisper, name: str):
    """Compile one component graph of `model` ("conv_stem", "attention" or "encoder_block"):
    float32 in ([B, n_mels, frames] for the stem, [B, T, d] otherwise), float32 out."""
    d, w = model.dims, WeightBank(model.arrays, model.dtype, model.device_ref)
    in_shape = ["batch", d.n_mels, "frames"] if name == "conv_stem" else ["batch", "ctx", d.n_audio_state]
    plan = model.plan
    body = {
        "conv_stem": lambda x: conv_stem(w, x, plan),
        "attention": lambda x: self_attention(w, "encoder.blocks.0", x, d.n_audio_head, plan),
        "encoder_block": lambda x: encoder_block(w, "encoder.blocks.0", x, d.n_audio_head, plan),
    }[name]
    with Graph(
        f"whisper_{name}",
        input_types=[TensorType(DType.float32, in_shape, device=w.device)],
        custom_extensions=extensions(plan),
    ) as graph:
        graph.output(body(graph.inputs[0].tensor.cast(w.dtype)).cast(DType.float32))
    return model.load_graph(graph, w.registry())
