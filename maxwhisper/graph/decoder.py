"""The decoder as graphs: the step graph (a prompt or a step against an in-place KV cache), the
token step graph (one new token per sequence, one Mojo op per layer, the greedy choice in the graph),
the alignment graph (cross-attention scores for word timestamps), and the cache's reorder and repeat.

The caches and the cross K/V are laid out for matrix-vector reads (K [B, H, n_text_ctx, Dh] and
V^T [B, H, Dh, n_text_ctx] per layer; int8 cross K/V with a scale per key and value under int8,
`cross_layout`). Why each graph is as it is: docs/design.md, "Decoder".
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from max.dtype import DType
from max.graph import BufferType, DeviceRef, Graph, Module, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .kernel_package import kernel_library
from .layers import (MakeLinear, WeightBank, attend_few_rows, attention, attention_scores_few_rows,
                     cross_attention_int8, dim_value, few_row_attention, few_row_linear, few_row_linear_int8,
                     greedy_choice, layer_norm, layer_norm_gather, linear_few_rows, merge_heads,
                     packed_linear_bf16, packed_linear_int8, split_heads, token_embedding, vocab_projection_int4)
from .plan import ExecutionPlan

OFFSET_TYPE = TensorType(DType.int64, [], device=DeviceRef.CPU())  # the cache's write offset, on the host

# (this call's K [B, H, n, Dh], V^T [B, H, Dh, n]) -> (K, V^T) over every position attended to
SelfKV = Callable[[TensorValue, TensorValue], tuple[TensorValue, TensorValue]]
# (q [B, H, n, Dh], K [B, H, S, Dh], V^T [B, H, Dh, S]) -> attention output [B, H, n, Dh]
Attend = Callable[[TensorValue, TensorValue, TensorValue], TensorValue]


def masked_attention(mask: TensorValue | None) -> Attend:
    return lambda q, k, v_t: attend_few_rows(attention_scores_few_rows(q, k), v_t, mask)


def decoder_block(w: WeightBank, p: str, dims: ModelDims, x: TensorValue, self_kv: SelfKV, self_attend: Attend,
                  cross_attend: Attend, cross_k: TensorValue, cross_v_t: TensorValue,
                  make_linear: MakeLinear = linear_few_rows, norm=layer_norm) -> TensorValue:
    """x [B, n, d] -> x [B, n, d]; norm: the layer norm (`plan.layer_norm`)"""
    d, h = dims.n_text_state, dims.n_text_head

    def linear(name: str):
        return make_linear(w, f"{p}.{name}")

    q, k, v = ops.split(linear("attn.qkv")(norm(w, f"{p}.attn_ln", x)), [d] * 3, axis=-1)
    k, v_t = self_kv(split_heads(k, h), ops.permute(split_heads(v, h), [0, 1, 3, 2]))
    x = x + linear("attn.out")(merge_heads(self_attend(split_heads(q, h), k, v_t)))

    q = linear("cross_attn.query")(norm(w, f"{p}.cross_attn_ln", x))
    x = x + linear("cross_attn.out")(merge_heads(cross_attend(split_heads(q, h), cross_k, cross_v_t)))
    h_mlp = linear("mlp.0")(norm(w, f"{p}.mlp_ln", x))
    return x + linear("mlp.2")(ops.gelu(h_mlp))


def _embed(w: WeightBank, tokens: TensorValue, positions: TensorValue, half: bool = False) -> TensorValue:
    """half: the token embedding is read from its float16 copy, which the output projection of
    `few_row_linear` already holds (the graph then keeps no float32 copy; with int8 weights the
    projection holds int8 numbers and the embedding stays float16)."""
    table = w.half("decoder.token_embedding.weight") if half else w("decoder.token_embedding.weight")
    return (ops.gather(table, tokens, axis=0).cast(w.dtype)
            + ops.gather(w("decoder.positional_embedding"), positions, axis=0))


def _logits(w: WeightBank, x: TensorValue, make_linear: MakeLinear = linear_few_rows, norm=layer_norm) -> TensorValue:
    """final layer norm, then the tied output projection: [B, k, d] -> float32 [B, k, n_vocab]"""
    return make_linear(w, "decoder.token_embedding")(norm(w, "decoder.ln", x)).cast(DType.float32)


def cache_shapes(dims: ModelDims, batch) -> list[list]:
    """One layer's self-attention cache: K [batch, H, n_text_ctx, Dh] and V^T [batch, H, Dh, n_text_ctx]."""
    H, dh, S = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    return [[batch, H, S, dh], [batch, H, dh, S]]


def _cache_types(dims: ModelDims, dtype: DType, device, batch="batch") -> list[BufferType]:
    """Every layer's cache buffers, in graph-input order."""
    return [BufferType(dtype, shape, device=device) for shape in cache_shapes(dims, batch)] * dims.n_text_layer


def cross_layout(dims: ModelDims, dtype: DType, batch, audio_ctx, int8: bool) -> list[tuple[DType, list]]:
    """The cross-attention tensors that the encoder graph outputs after the features and the
    decoder graphs take, as (dtype, shape) in order, each with the layers first and the batch
    second: K [L, batch, H, T, Dh] and V^T [L, batch, H, Dh, T] in `dtype`; int8: K and V^T in int8,
    then the float32 scales of each key and of each value, [L, batch, H, T] each (`encoder.quantized`)."""
    L, H, dh = dims.n_text_layer, dims.n_text_head, dims.n_text_state // dims.n_text_head
    kv = DType.int8 if int8 else dtype
    layout = [(kv, [L, batch, H, audio_ctx, dh]), (kv, [L, batch, H, dh, audio_ctx])]
    return layout + [(DType.float32, [L, batch, H, audio_ctx])] * 2 if int8 else layout


def _cross_types(dims: ModelDims, dtype: DType, device, batch, int8: bool) -> list[TensorType]:
    return [TensorType(t, shape, device=device) for t, shape in cross_layout(dims, dtype, batch, "audio_ctx", int8)]


def float_cross(cross: list[TensorValue]) -> tuple[TensorValue, TensorValue]:
    """Cross K and V^T as the graph's attention ops take them: as they are, or int8 ones times
    their scales, in float32."""
    if len(cross) == 2:
        return cross[0], cross[1]
    k, v_t, k_scales, v_scales = cross
    return k.cast(DType.float32) * ops.unsqueeze(k_scales, -1), v_t.cast(DType.float32) * ops.unsqueeze(v_scales, -2)


def step_linear(plan: ExecutionPlan) -> MakeLinear:
    """The step graphs' linears: `few_row_linear` (float16-stored) or `few_row_linear_int8` where
    the plan says so, MAX's matmul elsewhere."""
    if not plan.step_linears_kernel:
        return linear_few_rows
    return few_row_linear_int8 if plan.int8 else few_row_linear


def projection_linear(plan: ExecutionPlan) -> MakeLinear:
    """The step graphs' output projection: with int8 weights `vocab_projection_int4` (a 4-bit pass
    over the vocabulary, the logits near each row's largest again in int8), else `step_linear`'s."""
    return vocab_projection_int4 if plan.int8 else step_linear(plan)


def block_linear(plan: ExecutionPlan) -> MakeLinear:
    """The step graph's layer linears. With int8 weights the graph's calls are prompts (the token
    step graph takes every one-token step), tens to hundreds of rows: `packed_linear_int8`'s int8
    products run them faster than `few_row_linear_int8`'s float32 ones; with bf16 linears
    `packed_linear_bf16` runs them (the one-token steps stay float32, over float16-stored weights)."""
    if plan.int8:
        return partial(packed_linear_int8, amx=plan.amx_tiles)
    return packed_linear_bf16 if plan.bf16 else step_linear(plan)


def build_decoder_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """Inputs: tokens int64 [B, n]; positions int64 [n] (absolute); offset int64 [] on the host (= positions[0]);
    mask float32 [n, n_text_ctx] (0 where a query may attend, -inf elsewhere); logit_index int64 [k]
    (which of the n positions to project to logits); when the plan's step graph chooses, suppress
    float32 [B, n_vocab] and timestamp_begin int64 [1]; the cross-attention tensors (`cross_layout`);
    then per layer the cache buffers K [B, H, n_text_ctx, Dh] and V^T [B, H, Dh, n_text_ctx].
    Outputs: logits float32 [B, k, n_vocab]; when it chooses also the greedy token int64 [B] after
    the last of the k positions and its log probability float32 [B] (`layers.greedy_choice`).
    module: as `encoder.build_encoder_graph`'s."""
    L, S, dev = dims.n_text_layer, dims.n_text_ctx, w.device
    use_kernel = plan.step_kernels
    choice_types = [TensorType(DType.float32, ["batch", dims.n_vocab], device=dev),
                    TensorType(DType.int64, [1], device=dev)] if use_kernel else []
    types = [
        TensorType(DType.int64, ["batch", "n"], device=dev),
        TensorType(DType.int64, ["n"], device=dev),
        OFFSET_TYPE,
        TensorType(DType.float32, ["n", S], device=dev),
        TensorType(DType.int64, ["k"], device=dev),
        *choice_types,
        *_cross_types(dims, w.dtype, dev, "batch", plan.cross_int8),
        *_cache_types(dims, w.dtype, dev),
    ]
    n_cross = len(types) - 5 - len(choice_types) - 2 * L
    with Graph("whisper_decoder_step", input_types=types,
               custom_extensions=[kernel_library()] if use_kernel or plan.layer_norm_kernel else [],
               module=module) as graph:
        tokens, positions, offset, mask, logit_index = (v.tensor for v in graph.inputs[:5])
        choice_inputs = [v.tensor for v in graph.inputs[5:5 + len(choice_types)]]
        cross_start = 5 + len(choice_types)
        cross = [v.tensor for v in graph.inputs[cross_start:cross_start + n_cross]]
        cross_k, cross_v_t = cross[:2] if plan.cross_int8 else float_cross(cross)
        caches = graph.inputs[cross_start + n_cross:]
        x = _embed(w, tokens, positions, plan.step_linears_kernel)
        n = x.shape[1]
        new = (slice(offset, offset + dim_value(n)), n)

        def cached(i: int) -> SelfKV:
            def store_and_load(k, v_t):
                ops.buffer_store_slice(caches[2 * i], k, [slice(None)] * 2 + [new, slice(None)])
                ops.buffer_store_slice(caches[2 * i + 1], v_t, [slice(None)] * 3 + [new])
                return ops.buffer_load(caches[2 * i]), ops.buffer_load(caches[2 * i + 1])
            return store_and_load

        def step_attention(mask: TensorValue | None, limit: Callable[[], TensorValue]) -> Attend:
            """With the step kernels, a one-row call (every step after the prompt) runs
            `few_row_attention`; a prompt runs q @ K^T, softmax, @ V, which MAX fuses into its
            CPU flash attention. With the token step graph, which takes every one-row call, the
            graph runs prompts only: no `ops.cond`, whose two branches both compile. In the
            portable plan every call runs `masked_attention`."""
            if not use_kernel:
                return masked_attention(mask)

            def prompt(q, k, v_t):
                return attention(q, ops.transpose(k, -1, -2), ops.transpose(v_t, -1, -2), mask)
            if plan.token_step:
                return prompt
            one_row = ops.equal(dim_value(n), ops.constant(1, DType.int64, device=dev))
            keys = limit()
            return lambda q, k, v_t: ops.cond(
                one_row, [TensorType(q.dtype, q.shape, device=dev)],
                lambda: few_row_attention(q, k, v_t, keys), lambda: prompt(q, k, v_t))[0]

        def int8_cross_attention(i: int) -> Attend:
            """Layer i's cross-attention over the int8 keys and values as they are (`cross_attention_int8`)."""
            return lambda q, k, v_t: cross_attention_int8(q, k, v_t, cross[2][i], cross[3][i])

        self_attend = step_attention(mask, lambda: positions + 1)
        if not plan.cross_int8:
            cross_attend = step_attention(None, lambda: ops.broadcast_to(dim_value(cross_k.shape[3]).reshape([1]), [n]))
        for i in range(L):
            x = decoder_block(w, f"decoder.blocks.{i}", dims, x, cached(i), self_attend,
                              int8_cross_attention(i) if plan.cross_int8 else cross_attend,
                              cross_k[i], cross_v_t[i], block_linear(plan), plan.layer_norm)
        logits = _logits(w, ops.gather(x, logit_index, axis=1), projection_linear(plan), plan.layer_norm)
        graph.output(logits, *(greedy_choice(logits, *choice_inputs) if use_kernel else []))
    return graph


# what `decoder_layer_step` (kernels/decoder_layer.mojo) takes of a layer, in its order
LAYER_STEP_WEIGHTS = ("attn.qkv", "attn.out", "cross_attn.query", "cross_attn.out", "mlp.0", "mlp.2")
LAYER_STEP_VECTORS = ("attn_ln.weight", "attn_ln.bias", "attn.qkv.bias", "attn.out.bias", "cross_attn_ln.weight",
                      "cross_attn_ln.bias", "cross_attn.query.bias", "cross_attn.out.bias", "mlp_ln.weight",
                      "mlp_ln.bias", "mlp.0.bias", "mlp.2.bias")


def decoder_layer_step(w: WeightBank, p: str, x: TensorValue, cache_k, cache_v_t, cross: list[TensorValue],
                       positions: TensorValue, cross_keys: TensorValue, int8: bool = False) -> TensorValue:
    """One decoder block for one new token of each of B sequences as one CPU kernel: x [B, d]; the
    cache buffers K [B, H, S, Dh] and V^T [B, H, Dh, S], row b holding positions 0 ..
    positions[b] - 1 (the kernel writes the new key and value at positions[b]); cross: the layer's
    cross K [B, H, T, Dh] and V^T [B, H, Dh, T], float32, or int8 followed by their scales [B, H, T]
    (`cross_layout`); positions int64 [B], negative for a row left out; cross_keys int64 [B], the
    first audio positions of the T that row b attends to -> x [B, d].
    int8: the weights quantized per output row, their scales after the vectors."""
    linears = [f"{p}.{n}.weight" for n in LAYER_STEP_WEIGHTS]
    weights = w.flat(f"{p}.step_weights", linears, DType.int8 if int8 else DType.float16)
    scales = [f"{name}.int8_scales" for name in linears] if int8 else []
    vectors = w.flat(f"{p}.step_vectors", [f"{p}.{n}" for n in LAYER_STEP_VECTORS] + scales, DType.float32)
    if len(cross) == 2:  # float32 cross K/V: no scales (the kernel reads none)
        cross = [*cross] + [ops.constant(np.zeros((0, 0, 0), np.float32), DType.float32, device=x.device)] * 2
    out = [TensorType(DType.float32, x.shape, device=x.device)]
    return ops.inplace_custom("decoder_layer_step", x.device, [x, weights, vectors, cache_k, cache_v_t, *cross,
                                                               positions, cross_keys], out)[0].tensor


def build_token_step_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """The step graph for one new token of each of some of B sequences (every greedy or beam step
    after the prompt) on the CPU: each layer one `decoder_layer_step` kernel instead of ~25 ops, no
    `ops.cond`. Each sequence has its own position, so decodings of different lengths step
    together (`graph.shared_steps`); rows at a negative position sit the step out.

    Inputs: tokens int64 [B, 1]; positions int64 [B] (each row's new token's, -1: not stepping);
    cross_keys int64 [B] (the audio positions each row attends to, its first ones: T for all but
    windows heard with less padding than the others in a shared cache); rows int64 [k], the
    stepping rows whose logits are wanted; suppress float32 [k, n_vocab];
    timestamp_begin int64 [k] or [1]; the cross-attention tensors (`cross_layout`); then per
    layer the cache buffers K [B, H, n_text_ctx, Dh] and V^T [B, H, Dh, n_text_ctx].
    Outputs for the k rows: logits float32 [k, 1, n_vocab], tokens int64 [k], log probabilities
    float32 [k] (as `build_decoder_graph`'s). module: as `encoder.build_encoder_graph`'s."""
    dev = w.device
    types = [TensorType(DType.int64, ["batch", 1], device=dev), TensorType(DType.int64, ["batch"], device=dev),
             TensorType(DType.int64, ["batch"], device=dev), TensorType(DType.int64, ["rows"], device=dev),
             TensorType(DType.float32, ["rows", dims.n_vocab], device=dev),
             TensorType(DType.int64, ["rows_or_1"], device=dev)]
    cross_types = _cross_types(dims, w.dtype, dev, "batch", plan.cross_int8)
    types += cross_types + _cache_types(dims, w.dtype, dev)
    with Graph("whisper_token_step", input_types=types, custom_extensions=[kernel_library()], module=module) as graph:
        tokens, positions, cross_keys, rows, suppress, timestamp_begin = (v.tensor for v in graph.inputs[:6])
        cross = [v.tensor for v in graph.inputs[6:6 + len(cross_types)]]
        caches = [v.buffer for v in graph.inputs[6 + len(cross_types):]]
        x = token_embedding(w, tokens, positions)
        for i in range(dims.n_text_layer):
            x = decoder_layer_step(w, f"decoder.blocks.{i}", x, caches[2 * i], caches[2 * i + 1],
                                   [c[i] for c in cross], positions, cross_keys, plan.int8)
        x = layer_norm_gather(w, "decoder.ln", x, rows)
        logits = ops.reshape(projection_linear(plan)(w, "decoder.token_embedding")(x), [rows.shape[0], 1, dims.n_vocab])
        graph.output(logits, *greedy_choice(logits, suppress, timestamp_begin))
    return graph


def build_alignment_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan) -> Graph:
    """The whole token sequence at once, no cache (openai's `model(mel, tokens)` for word timing).

    Inputs: tokens int64 [1, n]; causal mask float32 [n, n]; the cross-attention tensors as for the step graph.
    Outputs: logits float32 [1, n, n_vocab]; cross-attention scores before softmax, float32
    [L, 1, H, n, T] (what openai's alignment hooks capture)."""
    dev = w.device
    types = [TensorType(DType.int64, [1, "n"], device=dev), TensorType(DType.float32, ["n", "n"], device=dev),
             *_cross_types(dims, w.dtype, dev, 1, plan.cross_int8)]
    with Graph("whisper_alignment", input_types=types) as graph:
        tokens, mask = (v.tensor for v in graph.inputs[:2])
        cross_k, cross_v_t = float_cross([v.tensor for v in graph.inputs[2:]])
        n = tokens.shape[1]
        x = _embed(w, tokens, ops.range(0, dim_value(n), 1, out_dim=n, device=dev, dtype=DType.int64))
        all_scores = []

        def cross_attend(q, k, v_t):  # keeps the scores
            all_scores.append(attention_scores_few_rows(q, k))
            return attend_few_rows(all_scores[-1], v_t)

        for i in range(dims.n_text_layer):
            x = decoder_block(w, f"decoder.blocks.{i}", dims, x, lambda k, v_t: (k, v_t), masked_attention(mask),
                              cross_attend, cross_k[i], cross_v_t[i])
        graph.output(_logits(w, x), ops.stack(all_scores))
    return graph


def build_cache_reorder_graph(dims: ModelDims, dtype: DType, device) -> Graph:
    """Beam search bookkeeping on the device: cache[i] = cache[source_indices[i]] for every layer.

    Inputs: source_indices int64 [B]; then the step graph's cache buffers. No outputs."""
    types = [TensorType(DType.int64, ["batch"], device=device), *_cache_types(dims, dtype, device)]
    with Graph("whisper_cache_reorder", input_types=types) as graph:
        index = graph.inputs[0].tensor
        for buf in graph.inputs[1:]:
            ops.buffer_store(buf, ops.gather(ops.buffer_load(buf), index, axis=0))
        graph.output()
    return graph


def build_batch_repeat_graph(dims: ModelDims, dtype: DType, device, cross_int8: bool = False) -> Graph:
    """Encoder output for n_audio windows -> for a batch whose rows are any of those windows, in
    any order and number (beam groups; one caller's share of a shared encoder call):
    out[i] = in[audio_index[i]] along the window axis. Inputs: audio_index int64 [B], features
    [n_audio, T, d], the cross-attention tensors (`cross_layout`); outputs the features and those."""
    types = [TensorType(DType.int64, ["batch"], device=device),
             TensorType(dtype, ["n_audio", "audio_ctx", dims.n_audio_state], device=device),
             *_cross_types(dims, dtype, device, "n_audio", cross_int8)]
    with Graph("whisper_batch_repeat", input_types=types) as graph:
        index, features, *cross = (x.tensor for x in graph.inputs)
        graph.output(ops.gather(features, index, axis=0), *(ops.gather(c, index, axis=1) for c in cross))
    return graph
