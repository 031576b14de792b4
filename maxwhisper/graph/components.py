"""Small graphs of single encoder components, built from the same functions as the full model,
so `maxwhisper.selfcheck` can compare each with openai-whisper's PyTorch module; and a probe of a
known MAX problem on GPUs."""
from __future__ import annotations

from max.dtype import DType
from max.graph import Graph, TensorType, ops

from .encoder import conv_stem, encoder_block, extensions, self_attention
from .layers import WeightBank, linear_few_rows
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
    with Graph(f"whisper_{name}", input_types=[TensorType(DType.float32, in_shape, device=w.device)],
               custom_extensions=extensions(plan)) as graph:
        graph.output(body(graph.inputs[0].tensor.cast(w.dtype)).cast(DType.float32))
    return model.load_graph(graph, w.registry())


MATVEC_PROBE_LAYER = "decoder.blocks.0.mlp.0"  # the decoder's first MLP linear (d -> 4 d)


def build_matvec_probe(model: MaxWhisper):
    """The decoder step's first MLP linear as a GPU runs it: `layers.linear_few_rows` over the
    model's weights in float16, rows symbolic as in the step graph. The one-column float16 matmul
    with a bias where MAX has a GPU problem (modular/modular issue 6892).
    Input x [rows, d_in] float16; float32 out [rows, d_out]."""
    w = WeightBank(model.arrays, DType.float16, model.device_ref)
    d_in = model.arrays[f"{MATVEC_PROBE_LAYER}.weight"].shape[1]
    x_type = TensorType(DType.float16, ["rows", d_in], device=w.device)
    with Graph("whisper_matvec_fp16_probe", input_types=[x_type]) as graph:
        graph.output(linear_few_rows(w, MATVEC_PROBE_LAYER)(graph.inputs[0].tensor).cast(DType.float32))
    return model.load_graph(graph, w.registry())
