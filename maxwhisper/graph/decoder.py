"""The decoder as graphs: the step graph (a prompt or a step against an in-place KV cache), the
token step graph (one new token per sequence: on the CPU one Mojo op per layer, elsewhere MAX's ops
with nothing on the host), the token run graph (several greedy steps a call) and its drafts' int8
cross K/V, the alignment graph (cross-attention scores for word timestamps), and the cache's
reorder and repeat. The step graphs pick the greedy token. Each graph's inputs are a
record of `graph.inputs`.

The caches and the cross K/V are laid out for matrix-vector reads (K [B, H, n_text_ctx, Dh] and
V^T [B, H, Dh, n_text_ctx] per layer; int8 cross K/V with a scale per key and value under int8,
`inputs.cross_layout`). Why each graph is as it is: docs/design.md, "Decoder".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from max.dtype import DType
from max.graph import Graph, Module, TensorType, TensorValue, ops

from ..checkpoint import ModelDims
from .inputs import (
    AlignmentInputs,
    BatchRepeatInputs,
    CacheReorderInputs,
    DraftCrossInputs,
    StepInputs,
    TokenRunInputs,
    TokenStepInputs,
)
from .kernel_package import kernel_library
from .layers import (
    MakeLinear,
    WeightBank,
    attend_few_rows,
    attention,
    attention_scores_few_rows,
    cross_attention,
    cross_attention_fits,
    cross_attention_int8,
    cross_int8_kernel,
    dim_value,
    few_row_attention,
    few_row_linear,
    few_row_linear_int8,
    greedy_choice,
    layer_norm,
    layer_norm_gather,
    linear_few_rows,
    merge_heads,
    packed_linear_bf16,
    packed_linear_int8,
    split_heads,
    timestamp_rules,
    token_embedding,
    vocab_draft_int4,
    vocab_projection_int4,
)
from .plan import ExecutionPlan

# (this call's K [B, H, n, Dh], V^T [B, H, Dh, n]) -> (K, V^T) over every position attended to
SelfKV = Callable[[TensorValue, TensorValue], tuple[TensorValue, TensorValue]]
# (q [B, H, n, Dh], K [B, H, S, Dh], V^T [B, H, Dh, S]) -> attention output [B, H, n, Dh]
Attend = Callable[[TensorValue, TensorValue, TensorValue], TensorValue]


def masked_attention(mask: TensorValue | None) -> Attend:
    return lambda q, k, v_t: attend_few_rows(attention_scores_few_rows(q, k), v_t, mask)


def decoder_block(
    w: WeightBank,
    p: str,
    dims: ModelDims,
    x: TensorValue,
    self_kv: SelfKV,
    self_attend: Attend,
    cross_attend: Attend,
    cross_k: TensorValue,
    cross_v_t: TensorValue,
    make_linear: MakeLinear = linear_few_rows,
    norm=layer_norm,
    keep: TensorValue | None = None,
) -> TensorValue:
    """x [B, n, d] -> x [B, n, d]; norm: the layer norm (`plan.layer_norm`). keep: int64 [k], the
    only rows whose outputs are wanted (the last block before the logits): every row's key and value
    still goes to the cache, the rest runs for those rows alone -> x [B, k, d]; self_attend then
    takes those rows' queries."""
    d, h = dims.n_text_state, dims.n_text_head

    def linear(name: str):
        return make_linear(w, f"{p}.{name}")

    q, k, v = ops.split(linear("attn.qkv")(norm(w, f"{p}.attn_ln", x)), [d] * 3, axis=-1)
    k, v_t = self_kv(split_heads(k, h), ops.permute(split_heads(v, h), [0, 1, 3, 2]))
    if keep is not None:
        x, q = ops.gather(x, keep, axis=1), ops.gather(q, keep, axis=1)
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
    return ops.gather(table, tokens, axis=0).cast(w.dtype) + ops.gather(
        w("decoder.positional_embedding"), positions, axis=0
    )


def _logits(w: WeightBank, x: TensorValue, make_linear: MakeLinear = linear_few_rows, norm=layer_norm) -> TensorValue:
    """final layer norm, then the tied output projection: [B, k, d] -> float32 [B, k, n_vocab]"""
    return make_linear(w, "decoder.token_embedding")(norm(w, "decoder.ln", x)).cast(DType.float32)


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
    over the vocabulary, the logits near each row's largest again in int8), else `step_linear`'s
    kernel, or MAX's matrix-vector product without `row_sums`: it has blocks enough for the vocabulary."""
    if plan.int8:
        return vocab_projection_int4
    return step_linear(plan) if plan.step_linears_kernel else partial(linear_few_rows, row_sums=False)


def block_linear(plan: ExecutionPlan) -> MakeLinear:
    """The step graph's layer linears. With int8 weights the graph's calls are prompts (the token
    step graph takes every one-token step), tens to hundreds of rows: `packed_linear_int8`'s int8
    products run them faster than `few_row_linear_int8`'s float32 ones; with bf16 linears
    `packed_linear_bf16` runs them (the one-token steps stay float32, over float16-stored weights)."""
    if plan.int8:
        return partial(packed_linear_int8, amx=plan.amx_tiles)
    return packed_linear_bf16 if plan.bf16 else step_linear(plan)


def build_decoder_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """The step graph: a prompt, or one step of every row (`inputs.StepInputs`). Outputs: logits
    float32 [B, k, n_vocab], the greedy token int64 [B] after the last of the k positions and its
    log probability float32 [B] (`plan.greedy_choice`). module: as `encoder.build_encoder_graph`'s."""
    L, dev, dh = dims.n_text_layer, w.device, dims.n_text_state // dims.n_text_head
    use_kernel = plan.step_kernels
    types = StepInputs.types(dims, w.dtype, dev, plan.cross_int8)
    with Graph(
        "whisper_decoder_step",
        input_types=types.flat(),
        custom_extensions=[kernel_library()] if use_kernel or plan.layer_norm_kernel else [],
        module=module,
    ) as graph:
        inputs = types.like(graph.inputs)
        tokens, positions, offset, mask, logit_index = (
            v.tensor for v in (inputs.tokens, inputs.positions, inputs.offset, inputs.mask, inputs.logit_index)
        )
        cross = [v.tensor for v in inputs.cross]
        cross_k, cross_v_t = cross[:2] if plan.cross_int8 else float_cross(cross)
        caches = [v.buffer for v in inputs.caches]
        x = _embed(w, tokens, positions, plan.step_linears_kernel)
        n = x.shape[1]
        new = (slice(offset, offset + dim_value(n)), n)
        # the keys written so far: the mask's causal rows attend to none past them
        written = (slice(0, offset + dim_value(n)), "written")
        mask = ops.slice_tensor(mask, [slice(None), written])

        def cached(i: int) -> SelfKV:
            def store_and_load(k, v_t):
                ops.buffer_store_slice(caches[2 * i], k, [slice(None)] * 2 + [new, slice(None)])
                ops.buffer_store_slice(caches[2 * i + 1], v_t, [slice(None)] * 3 + [new])
                return (
                    ops.slice_tensor(ops.buffer_load(caches[2 * i]), [slice(None)] * 2 + [written, slice(None)]),
                    ops.slice_tensor(ops.buffer_load(caches[2 * i + 1]), [slice(None)] * 3 + [written]),
                )

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
                one_row,
                [TensorType(q.dtype, q.shape, device=dev)],
                lambda: few_row_attention(q, k, v_t, keys),
                lambda: prompt(q, k, v_t),
            )[0]

        def int8_cross_attention(i: int) -> Attend:
            """Layer i's cross-attention over the int8 keys and values as they are (`cross_attention_int8`)."""
            return lambda q, k, v_t: cross_attention_int8(
                q, k, v_t, cross[2][i], cross[3][i], int16=plan.encoder_attention_int16
            )

        # the last block runs past its keys and values for the logits' rows only (`decoder_block`'s keep)
        last_self_attend = step_attention(
            ops.gather(mask, logit_index, axis=0), lambda: ops.gather(positions, logit_index, axis=0) + 1
        )
        self_attend = step_attention(mask, lambda: positions + 1)
        if plan.token_step and plan.step_kernels and cross_k.dtype == DType.float32 and cross_attention_fits(dh):
            cross_attend = cross_attention  # prompts only: over every frame, as one kernel
        elif not plan.cross_int8:
            cross_attend = step_attention(None, lambda: ops.broadcast_to(dim_value(cross_k.shape[3]).reshape([1]), [n]))
        for i in range(L):
            last = i == L - 1
            x = decoder_block(
                w,
                f"decoder.blocks.{i}",
                dims,
                x,
                cached(i),
                last_self_attend if last else self_attend,
                int8_cross_attention(i) if plan.cross_int8 else cross_attend,
                cross_k[i],
                cross_v_t[i],
                block_linear(plan),
                plan.layer_norm,
                keep=logit_index if last else None,
            )
        logits = _logits(w, x, projection_linear(plan), plan.layer_norm)
        graph.output(logits, *plan.greedy_choice(logits, inputs.suppress.tensor, inputs.timestamp_begin.tensor))
    return graph


# what `decoder_layer_step` (kernels/decoder_layer.mojo) takes of a layer, in its order
LAYER_STEP_WEIGHTS = ("attn.qkv", "attn.out", "cross_attn.query", "cross_attn.out", "mlp.0", "mlp.2")
LAYER_STEP_VECTORS = (
    "attn_ln.weight",
    "attn_ln.bias",
    "attn.qkv.bias",
    "attn.out.bias",
    "cross_attn_ln.weight",
    "cross_attn_ln.bias",
    "cross_attn.query.bias",
    "cross_attn.out.bias",
    "mlp_ln.weight",
    "mlp_ln.bias",
    "mlp.0.bias",
    "mlp.2.bias",
)


def decoder_layer_step(
    w: WeightBank,
    p: str,
    x: TensorValue,
    cache_k,
    cache_v_t,
    cross: list[TensorValue],
    positions: TensorValue,
    cross_keys: TensorValue,
    int8: bool = False,
) -> TensorValue:
    """One decoder block for one new token of each of B sequences as one CPU kernel: x [B, d]; the
    cache buffers K [C, H, S, Dh] and V^T [C, H, Dh, S], B a multiple of C, rows b of cache row
    b / (B / C), which holds positions 0 .. positions[b] - 1 (the kernel writes the new key and
    value at positions[b]; rows sharing a cache row step consecutive positions of one sequence, each
    attending to those before it); cross: the layer's cross K [C, H, T, Dh] and V^T [C, H, Dh, T],
    float32, or int8 followed by their scales [C, H, T] (`cross_layout`); positions int64 [B],
    negative for a row left out; cross_keys int64 [B], the first audio positions of the T that row b
    attends to -> x [B, d].
    int8: the weights quantized per output row, their scales after the vectors (named apart from
    the float16 copy, which a float32 plan's drafted runs also read)."""
    linears = [f"{p}.{n}.weight" for n in LAYER_STEP_WEIGHTS]
    suffix = "_int8" if int8 else ""
    weights = w.flat(f"{p}.step_weights{suffix}", linears, DType.int8 if int8 else DType.float16)
    scales = [f"{name}.int8_scales" for name in linears] if int8 else []
    vectors = w.flat(f"{p}.step_vectors{suffix}", [f"{p}.{n}" for n in LAYER_STEP_VECTORS] + scales, DType.float32)
    if len(cross) == 2:  # float32 cross K/V: no scales (the kernel reads none)
        cross = [*cross] + [ops.constant(np.zeros((0, 0, 0), np.float32), DType.float32, device=x.device)] * 2
    out = [TensorType(DType.float32, x.shape, device=x.device)]
    return ops.inplace_custom(
        "decoder_layer_step", x.device, [x, weights, vectors, cache_k, cache_v_t, *cross, positions, cross_keys], out
    )[0].tensor


def build_token_step_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """The step graph for one new token of each of some of B sequences (every greedy or beam step
    after the prompt), `inputs.TokenStepInputs`. Each sequence has its own position, so decodings
    of different lengths step together (`graph.shared_steps`); rows at a negative position sit the
    step out. With the CPU kernels each layer is one `decoder_layer_step` kernel instead of ~25
    ops; otherwise MAX's ops with nothing read on the host (`portable_token_layers`), so that a GPU
    can replay the call as a captured device graph.
    Outputs for the k rows: logits float32 [k, 1, n_vocab], tokens int64 [k], log probabilities
    float32 [k] (as `build_decoder_graph`'s). In the portable plan the tokens and positions are
    buffers the graph advances (`TokenStepInputs.types`): the chosen token goes into each of the k
    rows, and each stepping row's position moves on by one. module: as `encoder.build_encoder_graph`'s."""
    advances = not plan.step_kernels
    types = TokenStepInputs.types(dims, w.dtype, w.device, plan.cross_int8, advances)
    with Graph(
        "whisper_token_step",
        input_types=types.flat(),
        custom_extensions=[] if advances else [kernel_library()],
        module=module,
    ) as graph:
        inputs = types.like(graph.inputs)
        tokens, positions = (
            (ops.buffer_load(v.buffer) if advances else v.tensor) for v in (inputs.tokens, inputs.positions)
        )
        rows = inputs.rows.tensor
        cross = [v.tensor for v in inputs.cross]
        caches = [v.buffer for v in inputs.caches]
        logits = token_logits(w, dims, plan, tokens, positions, inputs.cross_keys.tensor, cross, caches, rows)
        chosen, logprobs = plan.greedy_choice(logits, inputs.suppress.tensor, inputs.timestamp_begin.tensor)
        if advances:
            chosen_rows = ops.scatter(tokens, ops.reshape(chosen, [-1, 1]), ops.reshape(rows, [-1, 1]), axis=0)
            # a row sitting out keeps its token: its choice (n_vocab, over no positions) is no token
            ops.buffer_store(inputs.tokens.buffer, ops.where(ops.reshape(positions, [-1, 1]) < 0, tokens, chosen_rows))
            one = ops.constant(1, DType.int64, device=w.device)
            ops.buffer_store(inputs.positions.buffer, ops.where(positions < 0, positions, positions + one))
        graph.output(logits, chosen, logprobs)
    return graph


def token_logits(
    w: WeightBank,
    dims: ModelDims,
    plan: ExecutionPlan,
    tokens: TensorValue,
    positions: TensorValue,
    cross_keys: TensorValue,
    cross: list[TensorValue],
    caches: list,
    rows: TensorValue,
) -> TensorValue:
    """One new token of each row through every layer into the cache (tokens [B, 1], positions [B],
    as `TokenStepInputs`'): the logits float32 [k, 1, n_vocab] of the k `rows`. With the CPU kernels
    one `decoder_layer_step` kernel a layer, elsewhere MAX's ops (`portable_token_layers`)."""
    if not plan.step_kernels:
        x = portable_token_layers(w, dims, tokens, positions, cross_keys, cross, caches)
        return _logits(w, ops.gather(x, rows, axis=0), projection_linear(plan))
    x = layer_norm_gather(
        w, "decoder.ln", kernel_token_layers(w, dims, plan, tokens, positions, cross_keys, cross, caches), rows
    )
    return _as_logits(projection_linear(plan)(w, "decoder.token_embedding")(x), dims)


def _as_logits(y: TensorValue, dims: ModelDims) -> TensorValue:
    """A projection's rows [k, n_vocab] as the step graphs' logits [k, 1, n_vocab]."""
    return ops.reshape(y, [y.shape[0], 1, dims.n_vocab])


def kernel_token_layers(
    w: WeightBank,
    dims: ModelDims,
    plan: ExecutionPlan,
    tokens: TensorValue,
    positions: TensorValue,
    cross_keys: TensorValue,
    cross: list[TensorValue],
    caches: list,
    *,
    layers: int | None = None,
    int8: bool | None = None,
) -> TensorValue:
    """The token embedding, then the first `layers` decoder layers (None: all) as CPU kernels, one
    `decoder_layer_step` a layer, inputs as `token_logits`' (the caches and cross K/V may serve
    groups of rows, as `decoder_layer_step`'s): x float32 [B, d]. int8: the layers' int8 weights
    (None: the plan's)."""
    x = token_embedding(w, tokens, positions)
    for i in range(dims.n_text_layer if layers is None else layers):
        x = decoder_layer_step(
            w,
            f"decoder.blocks.{i}",
            x,
            caches[2 * i],
            caches[2 * i + 1],
            [c[i] for c in cross],
            positions,
            cross_keys,
            plan.int8 if int8 is None else int8,
        )
    return x


def build_token_run_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan, module: Module | None = None) -> Graph:
    """`plan.steps_per_call` greedy one-token steps of every row in one call (`inputs.TokenRunInputs`),
    so that the host sees the device once per run instead of once per token. The logit filters'
    rules are in the graph: `suppress` what they forbid at every step, `layers.timestamp_rules` what
    the tokens so far forbid. Rows at a negative position sit the call out.
    Outputs: tokens int64 [B, K], log probabilities float32 [B, K]. The graph leaves its state
    buffers (the last token, its position, the token before, the last timestamp) set for the next
    call, so that a GPU can replay the call as a captured device graph.
    Where the plan drafts runs (the CPU's float32 one), each step drafts its token through the
    layers' int8 weights over int8 cross K/V (`inputs.draft_cross`) and a 4-bit projection over the
    rows nearest its state (`vocab_draft_int4`); then `exact_run_states` runs the run's tokens
    through the exact layers at once, writing the cache over the drafts' keys and values, and the
    outputs are the drafted tokens, then `checked_choices`' tokens and log probabilities: the host
    keeps the steps up to the first draft that differs from its check, that check included
    (`model.checked_steps`), and sets the state buffers itself each call (they end at the drafts'
    state)."""
    types = TokenRunInputs.types(dims, w.dtype, w.device, plan.cross_int8, plan.int8_drafts)
    with Graph(
        "whisper_token_run",
        input_types=types.flat(),
        custom_extensions=[kernel_library()] if plan.step_kernels else [],
        module=module,
    ) as graph:
        inputs = types.like(graph.inputs)
        state = (inputs.tokens, inputs.positions, inputs.previous, inputs.last_timestamp)
        tokens, positions, previous, last_timestamp = (ops.buffer_load(v.buffer) for v in state)
        timestamp_begin = inputs.timestamp_begin.tensor
        cross = [v.tensor for v in inputs.cross]
        caches = [v.buffer for v in inputs.caches]
        b = tokens.shape[0]
        rows = ops.range(0, dim_value(b), 1, out_dim=b, device=w.device, dtype=DType.int64)
        one = ops.constant(1, DType.int64, device=w.device)
        stepping = positions >= 0
        start = [tokens, positions]
        chosen_all, logprobs_all, stepped, finals, masks = [], [], [], [], []
        draft_cross = [v.tensor for v in inputs.draft_cross] if plan.int8_drafts else cross
        for _ in range(plan.steps_per_call):
            stepped.append(tokens)
            if plan.drafts_runs:  # the final layer norm's output projected over its nearest rows in 4 bits
                x = kernel_token_layers(
                    w,
                    dims,
                    plan,
                    tokens,
                    positions,
                    inputs.cross_keys.tensor,
                    draft_cross,
                    caches,
                    int8=plan.int8_drafts,
                )
                finals.append(layer_norm_gather(w, "decoder.ln", x, rows))
                logits = _as_logits(vocab_draft_int4(w, "decoder.token_embedding")(finals[-1]), dims)
            else:
                logits = token_logits(w, dims, plan, tokens, positions, inputs.cross_keys.tensor, cross, caches, rows)
            last = ops.reshape(tokens, [-1])
            rules = timestamp_rules(dims.n_vocab, last, previous, last_timestamp, timestamp_begin, inputs.eot.tensor)
            masks.append(inputs.suppress.tensor + rules)
            if plan.drafts_runs:  # a draft's token alone: the check gives the log probabilities
                chosen, logprobs = greedy_choice(logits, masks[-1], timestamp_begin, logprob=False)
            else:
                chosen, logprobs = plan.greedy_choice(logits, masks[-1], timestamp_begin)
            chosen_all.append(chosen)
            logprobs_all.append(logprobs)
            previous = ops.where(stepping, last, previous)
            stamped = ops.logical_and(stepping, chosen >= timestamp_begin)
            last_timestamp = ops.where(stamped, chosen, last_timestamp)
            tokens = ops.where(ops.reshape(stepping, [-1, 1]), ops.reshape(chosen, [-1, 1]), tokens)
            positions = ops.where(stepping, positions + one, positions)
        for buffer, value in zip(state, (tokens, positions, previous, last_timestamp), strict=True):
            ops.buffer_store(buffer.buffer, value)
        if plan.drafts_runs:
            if plan.int8_drafts:
                run_tokens = ops.concat(stepped, axis=1)
                states = exact_run_states(w, dims, plan, run_tokens, *start, inputs.cross_keys.tensor, cross, caches)
            else:  # the drafts' own states, step-major
                states = ops.reshape(ops.stack(finals, 0), [len(finals) * b, dims.n_text_state])
            graph.output(ops.stack(chosen_all, axis=1), *checked_choices(w, dims, plan, states, masks, timestamp_begin))
        else:
            graph.output(ops.stack(chosen_all, axis=1), ops.stack(logprobs_all, axis=1))
    return graph


def exact_run_states(
    w: WeightBank,
    dims: ModelDims,
    plan: ExecutionPlan,
    tokens: TensorValue,
    first_tokens: TensorValue,
    positions: TensorValue,
    cross_keys: TensorValue,
    cross: list[TensorValue],
    caches: list,
) -> TensorValue:
    """A drafted run's K steps in the exact float32 layers, all at once: tokens int64 [B, K], each
    row's token before the run and its first K - 1 drafts, at positions p .. p + K - 1 of the row
    (positions [B], as before the run; negative: the row sits out), as K rows that share the row's
    cache and cross K/V, each writing its key and value over the draft's -> the final layer norm's
    output of every step, step-major [K B, d]: what single steps after those tokens compute.
    first_tokens [B, 1]: the run's input, whose shape gives B."""
    b, k = first_tokens.shape[0], int(tokens.shape[1])
    steps = ops.range(0, k, 1, out_dim=k, device=w.device, dtype=DType.int64)
    column = ops.reshape(positions, [-1, 1])
    at = ops.where(column >= 0, column + ops.reshape(steps, [1, k]), column)  # [B, K]
    keys = ops.broadcast_to(ops.reshape(cross_keys, [-1, 1]), [b, k])
    rows = [ops.reshape(v, [b * k]) for v in (at, keys)]
    x = kernel_token_layers(w, dims, plan, ops.reshape(tokens, [b * k, 1]), *rows, cross, caches, int8=False)
    every = ops.range(0, dim_value(b * k), 1, out_dim=b * k, device=w.device, dtype=DType.int64)
    states = ops.reshape(layer_norm_gather(w, "decoder.ln", x, every), [b, k, dims.n_text_state])
    return ops.reshape(ops.transpose(states, 0, 1), [k * b, dims.n_text_state])


def checked_choices(
    w: WeightBank,
    dims: ModelDims,
    plan: ExecutionPlan,
    states: TensorValue,
    masks: list[TensorValue],
    timestamp_begin: TensorValue,
) -> list[TensorValue]:
    """A drafted run's choices again from the exact projection: each step's final state, step-major
    [K B, d], and filter mask [B, n_vocab], projected all at once (`few_row_linear` computes each
    row as it would alone, reading the float16 rows once for the run) -> tokens int64 [B, K] and
    their log probabilities float32 [B, K], what single steps would pick after the same tokens."""
    k, b = len(masks), timestamp_begin.shape[0]

    def step_major(values: list[TensorValue]) -> TensorValue:  # [B, n] each -> [K B, n]
        return ops.reshape(ops.stack(values, 0), [k * b, values[0].shape[1]])

    logits = _as_logits(projection_linear(plan)(w, "decoder.token_embedding")(states), dims)
    stamps = ops.reshape(step_major([ops.reshape(timestamp_begin, [b, 1])] * k), [k * b])
    chosen, logprobs = plan.greedy_choice(logits, step_major(masks), stamps)
    return [ops.transpose(ops.reshape(v, [k, b]), 0, 1) for v in (chosen, logprobs)]


def portable_token_layers(
    w: WeightBank,
    dims: ModelDims,
    tokens: TensorValue,
    positions: TensorValue,
    cross_keys: TensorValue,
    cross: list[TensorValue],
    caches: list,
) -> TensorValue:
    """Every decoder layer for one new token of each row, in MAX's ops: tokens int64 [B, 1],
    positions int64 [B] (negative: the row writes nothing, and its output is not to be read),
    cross_keys int64 [B] -> x [B, 1, d]. Each row's key and value go into the cache at its own
    position by a select over the whole cache, and its attention is masked to the positions up to
    its own and to its first cross_keys audio positions: no slice bound, nothing on the host."""
    dev, S = w.device, dims.n_text_ctx
    at = ops.max(positions, ops.constant(0, DType.int64, device=dev))
    x = _embed(w, tokens, ops.reshape(at, [-1, 1]))
    slots = ops.range(0, S, 1, out_dim=S, device=dev, dtype=DType.int64)
    value_slot = ops.reshape(slots, [1, 1, 1, S])
    # each row's own slot, [B, 1, 1, S] for V^T and the same reshaped to [B, 1, S, 1] for K: compared
    # as [1, 1, S, 1] against [B, 1, 1, 1] instead, MAX wrote every row's key at the first row's
    # position (docs/design.md#decoding-requests-together)
    written_v = ops.equal(value_slot, ops.reshape(positions, [-1, 1, 1, 1]))
    written_k = ops.reshape(written_v, [-1, 1, S, 1])
    zero, neg_inf = (ops.constant(v, DType.float32, device=dev) for v in (0.0, -np.inf))
    self_mask = ops.where(value_slot <= ops.reshape(at, [-1, 1, 1, 1]), zero, neg_inf)  # [B, 1, 1, S]
    cross_k, cross_v_t = float_cross(cross)
    t = cross_k.shape[3]
    audio = ops.range(0, dim_value(t), 1, out_dim=t, device=dev, dtype=DType.int64)
    cross_mask = ops.where(ops.reshape(audio, [1, 1, 1, -1]) < ops.reshape(cross_keys, [-1, 1, 1, 1]), zero, neg_inf)

    def cached(i: int) -> SelfKV:
        def store_and_load(k, v_t):  # k [B, H, 1, Dh], v_t [B, H, Dh, 1]
            k_all = ops.where(written_k, k, ops.buffer_load(caches[2 * i]))
            v_t_all = ops.where(written_v, v_t, ops.buffer_load(caches[2 * i + 1]))
            ops.buffer_store(caches[2 * i], k_all)
            ops.buffer_store(caches[2 * i + 1], v_t_all)
            return k_all, v_t_all

        return store_and_load

    for i in range(dims.n_text_layer):
        x = decoder_block(
            w,
            f"decoder.blocks.{i}",
            dims,
            x,
            cached(i),
            masked_attention(self_mask),
            masked_attention(cross_mask),
            cross_k[i],
            cross_v_t[i],
        )
    return x


def build_alignment_graph(w: WeightBank, dims: ModelDims, plan: ExecutionPlan) -> Graph:
    """The whole token sequence at once, no cache (openai's `model(mel, tokens)` for word timing),
    `inputs.AlignmentInputs`. Outputs: logits float32 [1, n, n_vocab]; cross-attention scores
    before softmax, float32 [L, 1, H, n, T] (what openai's alignment hooks capture)."""
    dev = w.device
    types = AlignmentInputs.types(dims, w.dtype, dev, plan.cross_int8)
    with Graph("whisper_alignment", input_types=types.flat()) as graph:
        inputs = types.like(graph.inputs)
        tokens, mask = inputs.tokens.tensor, inputs.mask.tensor
        cross_k, cross_v_t = float_cross([v.tensor for v in inputs.cross])
        n = tokens.shape[1]
        x = _embed(w, tokens, ops.range(0, dim_value(n), 1, out_dim=n, device=dev, dtype=DType.int64))
        all_scores = []

        def cross_attend(q, k, v_t):  # keeps the scores
            all_scores.append(attention_scores_few_rows(q, k))
            return attend_few_rows(all_scores[-1], v_t)

        for i in range(dims.n_text_layer):
            x = decoder_block(
                w,
                f"decoder.blocks.{i}",
                dims,
                x,
                lambda k, v_t: (k, v_t),
                masked_attention(mask),
                cross_attend,
                cross_k[i],
                cross_v_t[i],
            )
        graph.output(_logits(w, x), ops.stack(all_scores))
    return graph


def build_draft_cross_graph(dims: ModelDims, device) -> Graph:
    """The float32 plan's cross K/V in int8 (`inputs.DraftCrossInputs`), as the int8 plan's encoder
    makes them (`layers.cross_int8_kernel`), for the drafts of its runs to read: a quarter of the
    bytes. Once per decoding. Outputs: K, V^T and their scales (`inputs.cross_layout`)."""
    types = DraftCrossInputs.types(dims, device)
    with Graph("whisper_draft_cross", input_types=types.flat(), custom_extensions=[kernel_library()]) as graph:
        graph.output(*cross_int8_kernel(*(v.tensor for v in types.like(graph.inputs).cross)))
    return graph


def build_cache_reorder_graph(dims: ModelDims, dtype: DType, device) -> Graph:
    """Beam search bookkeeping on the device: cache[i] = cache[source_indices[i]] for every layer
    (`inputs.CacheReorderInputs`). No outputs."""
    types = CacheReorderInputs.types(dims, dtype, device)
    with Graph("whisper_cache_reorder", input_types=types.flat()) as graph:
        inputs = types.like(graph.inputs)
        for buf in inputs.caches:
            ops.buffer_store(buf, ops.gather(ops.buffer_load(buf), inputs.source_indices.tensor, axis=0))
        graph.output()
    return graph


def build_batch_repeat_graph(dims: ModelDims, dtype: DType, device, cross_int8: bool = False) -> Graph:
    """Encoder output for n_audio windows -> for a batch whose rows are any of those windows, in
    any order and number (beam groups; one caller's share of a shared encoder call):
    out[i] = in[audio_index[i]] along the window axis (`inputs.BatchRepeatInputs`); outputs the
    features and the cross-attention tensors."""
    types = BatchRepeatInputs.types(dims, dtype, device, cross_int8)
    with Graph("whisper_batch_repeat", input_types=types.flat()) as graph:
        inputs = types.like(graph.inputs)
        index = inputs.audio_index.tensor
        graph.output(
            ops.gather(inputs.features.tensor, index, axis=0),
            *(ops.gather(c.tensor, index, axis=1) for c in inputs.cross),
        )
    return graph
