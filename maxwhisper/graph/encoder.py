"""The audio encoder graph, which also projects each decoder layer's cross-attention K/V once
per window so that decoder steps never recompute them (under --precision int8 quantized to int8
there, a scale per key and per value). With the CPU kernels (the execution plan's choice) its
conv stem runs the `conv_stem` kernel, its linears `packed_linear` and its attention
`encoder_attention` (int8: in bfloat16 where `plan.encoder_attention_bf16`, in 12- and 16-bit
integers where `plan.encoder_attention_int16`); otherwise MAX's ops."""

from __future__ import annotations

from functools import partial

from max.dtype import DType
from max.graph import Graph, Module, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .kernel_package import kernel_library
from .layers import (
    MakeEncoderLinear,
    WeightBank,
    attention,
    conv1d,
    conv_stem_kernel,
    cross_layout_kernel,
    dim_value,
    encoder_attention,
    linear,
    merge_heads,
    packed_linear,
    packed_linear_bf16,
    packed_linear_int8,
    split_heads,
)
from .plan import ExecutionPlan


def self_attention(
    w: WeightBank, p: str, x: TensorValue, n_head: int, plan: ExecutionPlan, residual: TensorValue | None = None
) -> TensorValue:
    """openai's `block.attn(block.attn_ln(x))`: x [B, T, d] -> [B, T, d], + residual if given.
    The attention is one CPU kernel (`encoder_attention`) where the plan says so, else MAX's ops."""
    d = int(x.shape[-1])
    qkv = encoder_linear(plan)(w, f"{p}.attn.qkv")(plan.layer_norm(w, f"{p}.attn_ln", x))
    if plan.encoder_attention_kernel:
        a = encoder_attention(
            qkv, n_head, bf16=plan.encoder_attention_bf16, amx=plan.amx_tiles, int16=plan.encoder_attention_int16
        )
    else:
        q, k, v = ops.split(qkv, [d] * 3, axis=-1)
        heads = attention(split_heads(q, n_head), ops.transpose(split_heads(k, n_head), -1, -2), split_heads(v, n_head))
        a = merge_heads(heads)
    return encoder_linear(plan)(w, f"{p}.attn.out")(a, residual)


def encoder_block(w: WeightBank, p: str, x: TensorValue, n_head: int, plan: ExecutionPlan) -> TensorValue:
    """One residual block: x [B, T, d] -> [B, T, d]."""
    make_linear = encoder_linear(plan)
    x = self_attention(w, p, x, n_head, plan, residual=x)
    h = make_linear(w, f"{p}.mlp.0", gelu=True)(plan.layer_norm(w, f"{p}.mlp_ln", x))
    return make_linear(w, f"{p}.mlp.2")(h, x)


def conv_stem(w: WeightBank, mel: TensorValue, plan: ExecutionPlan) -> TensorValue:
    """mel [B, n_mels, frames] -> [B, frames / 2, d]: two GELU convolutions, the second strided, and
    the positional embedding. With the CPU kernels one kernel (`conv_stem_kernel`), else MAX's ops."""
    if plan.conv_stem_kernel:
        return conv_stem_kernel(w, mel)
    x = ops.permute(mel, [0, 2, 1])
    x = ops.gelu(conv1d(w, "encoder.conv1", x, stride=1))
    x = ops.gelu(conv1d(w, "encoder.conv2", x, stride=2))
    n_ctx = x.shape[1]
    return x + ops.slice_tensor(w("encoder.positional_embedding"), [(slice(0, dim_value(n_ctx)), n_ctx)])


def encoder_linear(plan: ExecutionPlan) -> MakeEncoderLinear:
    """`packed_linear` (int8: `packed_linear_int8`, bf16: `packed_linear_bf16`) where the plan says
    so, MAX's matmul elsewhere."""
    if not plan.encoder_linear_kernel:
        return linear
    if plan.int8:
        return partial(packed_linear_int8, amx=plan.amx_tiles)
    return packed_linear_bf16 if plan.bf16 else packed_linear


def extensions(plan: ExecutionPlan) -> list:
    """A Graph's `custom_extensions` for encoder pieces built under `plan`."""
    kernels = (
        plan.encoder_linear_kernel or plan.encoder_attention_kernel or plan.layer_norm_kernel or plan.conv_stem_kernel
    )
    return [kernel_library()] if kernels else []


def encode(w: WeightBank, dims: ModelDims, mel: TensorValue, plan: ExecutionPlan) -> TensorValue:
    """mel [B, n_mels, frames] (frames <= 2 * n_audio_ctx) -> audio features [B, frames / 2, d]."""
    x = conv_stem(w, mel, plan)
    for i in range(dims.n_audio_layer):
        x = encoder_block(w, f"encoder.blocks.{i}", x, dims.n_audio_head, plan)
    return plan.layer_norm(w, "encoder.ln_post", x)


def cross_kv(w: WeightBank, dims: ModelDims, features: TensorValue, plan: ExecutionPlan) -> list[TensorValue]:
    """features [B, T, d] -> K [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T]
    (the layouts `attention_scores_few_rows` and `attend_few_rows` read fastest); int8: those in
    int8, then the scales of each key and each value [n_text_layer, B, H, T] (`decoder.cross_layout`).
    One linear projects every layer's keys and values; with the CPU kernels one kernel lays them
    out (`cross_layout_kernel`), else MAX's ops."""
    kv = encoder_linear(plan)(w, "decoder.cross_kv")(features)
    if plan.encoder_linear_kernel:
        return cross_layout_kernel(kv, dims.n_text_layer, dims.n_text_head, plan.cross_int8)
    parts = ops.split(kv, [dims.n_text_state] * 2 * dims.n_text_layer, axis=-1)  # layer 0's k and v, layer 1's, ...
    ks = [split_heads(k, dims.n_text_head) for k in parts[0::2]]
    vs = [ops.permute(split_heads(v, dims.n_text_head), [0, 1, 3, 2]) for v in parts[1::2]]
    return [ops.stack(ks), ops.stack(vs)]  # int8 cross K/V need the CPU kernels (`plan.make_plan`)


def build_encoder_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """Inputs: mel float32 [B, n_mels, frames]. Outputs: features float32 [B, T, d], cross K
    [n_text_layer, B, H, T, Dh] and V^T [n_text_layer, B, H, Dh, T] in the model dtype, with T = frames / 2
    (int8: those in int8 and their scales, `decoder.cross_layout`). module: built into it, to be
    compiled with the other graphs there."""
    mel_type = TensorType(DType.float32, ["batch", dims.n_mels, "frames"], device=w.device)
    with Graph("whisper_encoder", input_types=[mel_type], custom_extensions=extensions(plan), module=module) as graph:
        features = encode(w, dims, graph.inputs[0].tensor.cast(w.dtype), plan)
        graph.output(features.cast(DType.float32), *cross_kv(w, dims, features, plan))
    return graph
