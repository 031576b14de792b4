"""The audio encoder graph, which also projects each decoder layer's cross-attention K/V once
per window so that decoder steps never recompute them. On the CPU its linears run the
`packed_linear` kernel (~1.2x MAX's float32 matmul for these shapes on a 2-core AVX2 CPU) and
its attention the `encoder_attention` kernel."""
from __future__ import annotations

from max.dtype import DType
from max.graph import Graph, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .layers import (MakeEncoderLinear, WeightBank, attention, conv1d, dim_value, encoder_attention,
                     encoder_attention_fits, layer_norm, linear, merge_heads, kernel_library, packed_linear,
                     packed_linear_fits, split_heads)


def self_attention(w: WeightBank, p: str, x: TensorValue, n_head: int, make_linear: MakeEncoderLinear,
                   residual: TensorValue | None = None) -> TensorValue:
    """openai's `block.attn(block.attn_ln(x))`: x [B, T, d] -> [B, T, d], + residual if given.
    With the CPU kernels the attention is one too (`encoder_attention`), elsewhere MAX's ops."""
    d = int(x.shape[-1])
    qkv = make_linear(w, f"{p}.attn.qkv")(layer_norm(w, f"{p}.attn_ln", x))
    if make_linear is packed_linear and encoder_attention_fits(d, n_head):
        a = encoder_attention(qkv, n_head)
    else:
        q, k, v = ops.split(qkv, [d] * 3, axis=-1)
        heads = attention(split_heads(q, n_head), ops.transpose(split_heads(k, n_head), -1, -2), split_heads(v, n_head))
        a = merge_heads(heads)
    return make_linear(w, f"{p}.attn.out")(a, residual)


def encoder_block(w: WeightBank, p: str, x: TensorValue, n_head: int, make_linear: MakeEncoderLinear) -> TensorValue:
    """One residual block: x [B, T, d] -> [B, T, d]."""
    x = self_attention(w, p, x, n_head, make_linear, residual=x)
    h = make_linear(w, f"{p}.mlp.0", gelu=True)(layer_norm(w, f"{p}.mlp_ln", x))
    return make_linear(w, f"{p}.mlp.2")(h, x)


def conv_stem(w: WeightBank, mel: TensorValue) -> TensorValue:
    """mel [B, n_mels, frames] -> [B, frames / 2, d]: two GELU convolutions, the second strided."""
    x = ops.permute(mel, [0, 2, 1])
    x = ops.gelu(conv1d(w, "encoder.conv1", x, stride=1))
    return ops.gelu(conv1d(w, "encoder.conv2", x, stride=2))


def encoder_linear(w: WeightBank, dims: ModelDims) -> MakeEncoderLinear:
    """`packed_linear` on the CPU (every Whisper's widths fit it), MAX's matmul elsewhere."""
    widths = (dims.n_audio_state, 3 * dims.n_audio_state, 4 * dims.n_audio_state, 2 * dims.n_text_state)
    return packed_linear if w.device.is_cpu() and all(map(packed_linear_fits, widths)) else linear


def extensions(make_linear: MakeEncoderLinear) -> list:
    """A Graph's `custom_extensions` for encoder pieces built with `make_linear`."""
    return [kernel_library()] if make_linear is packed_linear else []


def encode(w: WeightBank, dims: ModelDims, mel: TensorValue, make_linear: MakeEncoderLinear) -> TensorValue:
    """mel [B, n_mels, frames] (frames <= 2 * n_audio_ctx) -> audio features [B, frames / 2, d]."""
    x = conv_stem(w, mel)
    n_ctx = x.shape[1]
    pos = ops.slice_tensor(w("encoder.positional_embedding"), [(slice(0, dim_value(n_ctx)), n_ctx)])
    x = x + pos
    for i in range(dims.n_audio_layer):
        x = encoder_block(w, f"encoder.blocks.{i}", x, dims.n_audio_head, make_linear)
    return layer_norm(w, "encoder.ln_post", x)


def cross_kv(w: WeightBank, dims: ModelDims, features: TensorValue,
             make_linear: MakeEncoderLinear) -> tuple[TensorValue, TensorValue]:
    """features [B, T, d] -> K [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T]
    (the layouts `attention_scores_few_rows` and `attend_few_rows` read fastest)."""
    ks, vs = [], []
    for i in range(dims.n_text_layer):
        k, v = ops.split(make_linear(w, f"decoder.blocks.{i}.cross_attn.kv")(features), [dims.n_text_state] * 2, axis=-1)
        ks.append(split_heads(k, dims.n_text_head))
        vs.append(ops.permute(split_heads(v, dims.n_text_head), [0, 1, 3, 2]))
    return ops.stack(ks), ops.stack(vs)


def build_encoder_graph(w: WeightBank, dims: ModelDims) -> Graph:
    """Inputs: mel float32 [B, n_mels, frames]. Outputs: features float32 [B, T, d], cross K
    [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T] in the model dtype, with T = frames / 2."""
    mel_type = TensorType(DType.float32, ["batch", dims.n_mels, "frames"], device=w.device)
    make_linear = encoder_linear(w, dims)
    with Graph("whisper_encoder", input_types=[mel_type], custom_extensions=extensions(make_linear)) as graph:
        features = encode(w, dims, graph.inputs[0].tensor.cast(w.dtype), make_linear)
        k, v = cross_kv(w, dims, features, make_linear)
        graph.output(features.cast(DType.float32), k, v)
    return graph
