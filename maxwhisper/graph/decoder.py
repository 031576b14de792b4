"""One decoder step as a graph: any number of new tokens against an in-place KV cache.

The self-attention cache is a pair of preallocated buffers per layer, K^T [B, H, Dh, n_text_ctx]
and V [B, H, n_text_ctx, Dh],
written at `offset` by each call; attention reads all n_text_ctx positions under an additive
mask built on the host, so one compiled graph serves the prompt and every later step.
"""
from __future__ import annotations

from max.dtype import DType
from max.graph import BufferType, Graph, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .layers import WeightBank, dim_value, attention, layer_norm, linear, merge_heads, mlp, split_heads


def decoder_block(w: WeightBank, p: str, dims: ModelDims, x, offset, mask, cache_k, cache_v, cross_k, cross_v):
    """x [B, n, d] -> [B, n, d]; writes this step's keys and values into the cache buffers."""
    d, h = dims.n_text_state, dims.n_text_head
    q, k, v = ops.split(linear(w, f"{p}.attn.qkv")(layer_norm(w, f"{p}.attn_ln", x)), [d] * 3, axis=-1)
    n = x.shape[1]
    end = offset + dim_value(n)
    new = (slice(offset, end), n)
    ops.buffer_store_slice(cache_k, ops.permute(split_heads(k, h), [0, 1, 3, 2]), [slice(None)] * 3 + [new])
    ops.buffer_store_slice(cache_v, split_heads(v, h), [slice(None)] * 2 + [new, slice(None)])
    a = attention(split_heads(q, h), ops.buffer_load(cache_k), ops.buffer_load(cache_v), mask)
    x = x + linear(w, f"{p}.attn.out")(merge_heads(a))

    q = linear(w, f"{p}.cross_attn.query")(layer_norm(w, f"{p}.cross_attn_ln", x))
    x = x + linear(w, f"{p}.cross_attn.out")(merge_heads(attention(split_heads(q, h), cross_k, cross_v)))
    return x + mlp(w, p, x)


def build_decoder_graph(w: WeightBank, dims: ModelDims) -> Graph:
    """Inputs: tokens int64 [B, n]; positions int64 [n] (absolute); offset int64 [] (= positions[0]);
    mask float32 [n, n_text_ctx] (0 where a query may attend, -inf elsewhere); logit_index int64 [k]
    (which of the n positions to project to logits); cross K^T [L, B, H, Dh, T] and V [L, B, H, T, Dh];
    then per layer the cache buffers K^T [B, H, Dh, n_text_ctx] and V [B, H, n_text_ctx, Dh]. Output: logits float32 [B, k, n_vocab]."""
    L, H, dh, S = dims.n_text_layer, dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    dev, dt = w.device, w.dtype
    cache_k, cache_v = BufferType(dt, ["batch", H, dh, S], device=dev), BufferType(dt, ["batch", H, S, dh], device=dev)
    types = [
        TensorType(DType.int64, ["batch", "n"], device=dev),
        TensorType(DType.int64, ["n"], device=dev),
        TensorType(DType.int64, [], device=dev),
        TensorType(DType.float32, ["n", S], device=dev),
        TensorType(DType.int64, ["k"], device=dev),
        TensorType(dt, [L, "batch", H, dh, "audio_ctx"], device=dev),
        TensorType(dt, [L, "batch", H, "audio_ctx", dh], device=dev),
    ] + [cache_k, cache_v] * L
    with Graph("whisper_decoder_step", input_types=types) as graph:
        tokens, positions, offset, mask, logit_index, cross_k, cross_v = (v.tensor for v in graph.inputs[:7])
        caches = graph.inputs[7:]
        x = ops.gather(w("decoder.token_embedding.weight"), tokens, axis=0)
        x = x + ops.gather(w("decoder.positional_embedding"), positions, axis=0)
        for i in range(L):
            x = decoder_block(w, f"decoder.blocks.{i}", dims, x, offset, mask, caches[2 * i], caches[2 * i + 1],
                              cross_k[i], cross_v[i])
        x = layer_norm(w, "decoder.ln", ops.gather(x, logit_index, axis=1))
        graph.output(ops.matmul(x, w("decoder.token_embedding.weight_t")).cast(DType.float32))
    return graph
