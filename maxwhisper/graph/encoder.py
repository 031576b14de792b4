"""The audio encoder graph, which also projects each decoder layer's cross-attention K/V once
per window so that decoder steps never recompute them (under --precision int8 quantized to int8
there, a scale per key and per value). With the CPU kernels (the execution plan's choice) its
linears run the `packed_linear` kernel and its attention `encoder_attention`; otherwise MAX's ops."""
from __future__ import annotations

from max.dtype import DType
from max.graph import Graph, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .layers import (MakeEncoderLinear, WeightBank, attention, conv1d, dim_value, encoder_attention, layer_norm,
                     linear, merge_heads, kernel_library, packed_linear, packed_linear_bf16, packed_linear_int8,
                     split_heads)
from .plan import ExecutionPlan


def self_attention(w: WeightBank, p: str, x: TensorValue, n_head: int, plan: ExecutionPlan,
                   residual: TensorValue | None = None) -> TensorValue:
    """openai's `block.attn(block.attn_ln(x))`: x [B, T, d] -> [B, T, d], + residual if given.
    The attention is one CPU kernel (`encoder_attention`) where the plan says so, else MAX's ops."""
    d = int(x.shape[-1])
    qkv = encoder_linear(plan)(w, f"{p}.attn.qkv")(layer_norm(w, f"{p}.attn_ln", x))
    if plan.encoder_attention_kernel:
        a = encoder_attention(qkv, n_head)
    else:
        q, k, v = ops.split(qkv, [d] * 3, axis=-1)
        heads = attention(split_heads(q, n_head), ops.transpose(split_heads(k, n_head), -1, -2), split_heads(v, n_head))
        a = merge_heads(heads)
    return encoder_linear(plan)(w, f"{p}.attn.out")(a, residual)


def encoder_block(w: WeightBank, p: str, x: TensorValue, n_head: int, plan: ExecutionPlan) -> TensorValue:
    """One residual block: x [B, T, d] -> [B, T, d]."""
    make_linear = encoder_linear(plan)
    x = self_attention(w, p, x, n_head, plan, residual=x)
    h = make_linear(w, f"{p}.mlp.0", gelu=True)(layer_norm(w, f"{p}.mlp_ln", x))
    return make_linear(w, f"{p}.mlp.2")(h, x)


def conv_stem(w: WeightBank, mel: TensorValue) -> TensorValue:
    """mel [B, n_mels, frames] -> [B, frames / 2, d]: two GELU convolutions, the second strided."""
    x = ops.permute(mel, [0, 2, 1])
    x = ops.gelu(conv1d(w, "encoder.conv1", x, stride=1))
    return ops.gelu(conv1d(w, "encoder.conv2", x, stride=2))


def encoder_linear(plan: ExecutionPlan) -> MakeEncoderLinear:
    """`packed_linear` (int8: `packed_linear_int8`, bf16: `packed_linear_bf16`) where the plan says
    so, MAX's matmul elsewhere."""
    if not plan.encoder_linear_kernel:
        return linear
    return packed_linear_int8 if plan.int8 else packed_linear_bf16 if plan.bf16 else packed_linear


def extensions(plan: ExecutionPlan) -> list:
    """A Graph's `custom_extensions` for encoder pieces built under `plan`."""
    return [kernel_library()] if plan.encoder_linear_kernel or plan.encoder_attention_kernel else []


def encode(w: WeightBank, dims: ModelDims, mel: TensorValue, plan: ExecutionPlan) -> TensorValue:
    """mel [B, n_mels, frames] (frames <= 2 * n_audio_ctx) -> audio features [B, frames / 2, d]."""
    x = conv_stem(w, mel)
    n_ctx = x.shape[1]
    pos = ops.slice_tensor(w("encoder.positional_embedding"), [(slice(0, dim_value(n_ctx)), n_ctx)])
    x = x + pos
    for i in range(dims.n_audio_layer):
        x = encoder_block(w, f"encoder.blocks.{i}", x, dims.n_audio_head, plan)
    return layer_norm(w, "encoder.ln_post", x)


def cross_kv(w: WeightBank, dims: ModelDims, features: TensorValue, make_linear: MakeEncoderLinear,
             int8: bool = False) -> list[TensorValue]:
    """features [B, T, d] -> K [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T]
    (the layouts `attention_scores_few_rows` and `attend_few_rows` read fastest); int8: those in
    int8, then the scales of each key and each value [n_text_layer, B, H, T] (`decoder.cross_layout`)."""
    ks, vs = [], []
    for i in range(dims.n_text_layer):
        kv = make_linear(w, f"decoder.blocks.{i}.cross_attn.kv")(features)
        k, v = ops.split(kv, [dims.n_text_state] * 2, axis=-1)
        ks.append(split_heads(k, dims.n_text_head))
        vs.append(ops.permute(split_heads(v, dims.n_text_head), [0, 1, 3, 2]))
    k, v_t = ops.stack(ks), ops.stack(vs)
    if not int8:
        return [k, v_t]
    (k, k_scales), (v_t, v_scales) = quantized(k, -1), quantized(v_t, -2)
    return [k, v_t, k_scales, v_scales]


def quantized(x: TensorValue, axis: int) -> tuple[TensorValue, TensorValue]:
    """x ~ q x scale, q int8 in [-127, 127] and a float32 scale per slice along `axis` (max |x| / 127
    over the slice, 1 for an all-zero one; as `weights.quantize_int8` for weights), rounded to
    nearest: -> (q, the scales, `axis` dropped). Per key (over Dh) and per value: a key's or a
    value's error is then a fraction of its own size, ~0.7 % of the whole on Whisper's."""
    amax = ops.max(ops.abs(x), axis=axis)
    scale = ops.where(amax > 0, amax / 127, ops.constant(1, DType.float32, device=x.device))
    q = ops.min(ops.max(ops.round(x / scale), -127), 127).cast(DType.int8)
    return q, ops.squeeze(scale, axis)


def build_encoder_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan) -> Graph:
    """Inputs: mel float32 [B, n_mels, frames]. Outputs: features float32 [B, T, d], cross K
    [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T] in the model dtype, with T = frames / 2
    (int8: those in int8 and their scales, `decoder.cross_layout`)."""
    mel_type = TensorType(DType.float32, ["batch", dims.n_mels, "frames"], device=w.device)
    with Graph("whisper_encoder", input_types=[mel_type], custom_extensions=extensions(plan)) as graph:
        features = encode(w, dims, graph.inputs[0].tensor.cast(w.dtype), plan)
        graph.output(features.cast(DType.float32), *cross_kv(w, dims, features, encoder_linear(plan), plan.cross_int8))
    return graph
