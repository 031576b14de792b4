# One decoder layer for one new token of each of B sequences (a greedy or beam step on the CPU) as
# a single op. A step is bound by reading weights and cross K/V (~75 MB for tiny.en), but as ~100
# MAX ops it took well above that floor: each op's dispatch and its cold start on a few hundred KB
# cost more than the bytes. Here a layer is 11 phases over the same arithmetic, run by one task per
# thread (`share_phases`, cheaper than a `sync_parallelize` per phase): the linears are
# `few_row_linear`'s (float16-stored weights widened in registers, so the same float32 products;
# int8 weights and their scales under --precision int8), the attentions `few_row_attention`'s (the
# cross-attention's `attend_int8` over int8 keys and values under --precision int8). With B rows
# each block of weight rows is multiplied with every row while it is in cache: read from memory
# once. Each row has its own position, so sequences of different lengths (decodings of different
# requests) step together; the op writes each row's new key and value into the cache itself.
# Rows may also share a cache row: several new tokens of one sequence at consecutive positions, each
# attending to those before it (a drafted run's exact pass), the same sums as one token a call.
import extensibility
from extensibility import InputTensor, OutputTensor, _MutableInputTensor as MutableInputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc, stack_allocation

from .attention import MAX_KEYS, W8, attend, attend_int8
from .layer_norm import layer_norm
from .linear import dot_rows_each, finish, gelu_erf, rows_per_item
from .threads import share_phases

comptime W = 8  # float32 lanes per SIMD vector (AVX2)
comptime MAX_D = 1280  # large's width: the scratch vectors live on the stack
comptime PHASES = 11


def rows_linear[wtype: DType, F: def(Int, Int, Float32) register_passable -> None](
        x: UnsafePointer[Float32, ...], kd: Int, pp: UnsafePointer[Int64, ...], nb: Int,
        w: UnsafePointer[Scalar[wtype], ...], scales: UnsafePointer[Float32, ...], bias: UnsafePointer[Float32, ...],
        j0: Int, j1: Int, store: F):
    """store(b, j, x[b] . w[j] + bias[j]) (int8: the sum times scales[j] first) for every stepping row
    b of x [B, kd] and weight rows j0 <= j < j1: runs of consecutive stepping rows at once
    (`dot_rows_each`), each row's sums what it would get alone."""
    var y = stack_allocation[4 * MAX_D, Float32]()
    var cap = max(1, (4 * MAX_D) // (j1 - j0))  # rows whose sums y holds
    var b = 0
    while b < nb:
        if pp[b] < 0:
            b += 1
            continue
        var m = 1
        while m < cap and b + m < nb and pp[b + m] >= 0:
            m += 1
        dot_rows_each(x + b * kd, m, w, kd, j0, j1, y, j1 - j0)
        for i in range(m):
            for j in range(j0, j1):
                store(b + i, j, finish[wtype](y[i * (j1 - j0) + j - j0], scales, j, bias[j]))
        b += m


def gelu_in_place(row: UnsafePointer[Float32, MutUntrackedOrigin], j0: Int, j1: Int):
    """GELU in place over row[j0:j1]."""
    var j = j0
    while j + W <= j1:
        row.store(j, gelu_erf[W](row.load[width=W](j)))
        j += W
    while j < j1:
        row[j] = gelu_erf[1](row[j])
        j += 1


@extensibility.register("decoder_layer_step")
struct DecoderLayerStep:
    """One residual attention block of the decoder for one new token of each of B sequences:
    x += attn(ln(x)); x += cross_attn(ln(x)); x += mlp(ln(x)).

    x float32 [B, d]; weights float16 (or int8) [14 d^2]: attn.qkv [3d, d], attn.out [d, d],
    cross_attn.query [d, d], cross_attn.out [d, d], mlp.0 [4d, d], mlp.2 [d, 4d], each [d_out,
    d_in] row-major; vectors float32 [17 d] (int8: [28 d]): attn_ln weight and bias, attn.qkv
    bias [3d], attn.out bias, cross_attn_ln weight and bias, cross_attn.query bias,
    cross_attn.out bias, mlp_ln weight and bias, mlp.0 bias [4d], mlp.2 bias (int8: then the
    six weights' scales per output row, [11 d] in the weights' order); the self-attention cache K [C, H, S, Dh]
    and V^T [C, H, Dh, S], with B a multiple of C: rows b of cache row c = b / (B / C), which holds
    positions 0 .. positions[b] - 1 but those of the rows before b in its group, into which the op
    writes row b's new key and value at positions[b]; cross K [C, H, T, Dh] and V^T [C, H, Dh, T], float32
    or (--precision int8) int8 with float32 scales per key and per value, K scales and V scales
    [C, H, T] ([0, 0, 0] for float32 ones: unread); positions int64 [B], a negative one for a row
    that does not step (left as it is); cross_keys int64 [B], the audio positions row b attends to,
    its first ones (1 .. T: rows of windows heard with less padding step beside 30 s ones).
    Output: x float32 [B, d]. CPU only.
    """

    @staticmethod
    def execute[target: StaticString, wtype: DType, ctype: DType](
        x_out: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        weights: InputTensor[dtype=wtype, rank=1, ...],
        vectors: InputTensor[dtype=DType.float32, rank=1, ...],
        cache_k: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        cache_v_t: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        cross_k: InputTensor[dtype=ctype, rank=4, ...],
        cross_v_t: InputTensor[dtype=ctype, rank=4, ...],
        cross_k_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        cross_v_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        positions: InputTensor[dtype=DType.int64, rank=1, ...],
        cross_keys: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("decoder_layer_step runs on the CPU only")
        var nb = x.dim_size(0)
        var d = x.dim_size(1)
        var heads = cache_k.dim_size(1)
        var s_len = cache_k.dim_size(2)
        var t_len = cross_k.dim_size(2)
        var dh = d // heads
        var pp = positions.unsafe_ptr()
        var kp = cross_keys.unsafe_ptr()
        if d > MAX_D or d % W != 0 or dh % W != 0 or t_len > MAX_KEYS:
            raise Error("decoder_layer_step: d <= 1280, d and Dh multiples of 8, T <= 2048")
        var n_cache = cache_k.dim_size(0)
        if (n_cache < 1 or nb % n_cache != 0 or cache_v_t.dim_size(0) != n_cache or cross_k.dim_size(0) != n_cache
                or positions.dim_size(0) != nb or cross_keys.dim_size(0) != nb):
            raise Error("decoder_layer_step: x, the positions and cross keys have B rows, the caches and cross K/V C, B a multiple of C")
        var group = nb // n_cache  # rows a cache row serves
        comptime if ctype == DType.int8:
            var k_ok = (cross_k_scales.dim_size(0) == n_cache and cross_k_scales.dim_size(1) == heads
                        and cross_k_scales.dim_size(2) == t_len)
            var v_ok = (cross_v_scales.dim_size(0) == n_cache and cross_v_scales.dim_size(1) == heads
                        and cross_v_scales.dim_size(2) == t_len)
            if not (k_ok and v_ok):
                raise Error("decoder_layer_step: int8 cross K/V need scales [C, H, T]")
            if dh % W8 != 0:
                raise Error("decoder_layer_step: int8 cross K/V need Dh a multiple of 16")
        elif ctype != DType.float32:
            raise Error("decoder_layer_step: cross K/V are float32 or int8")
        for b in range(nb):
            if Int(pp[b]) >= s_len:
                raise Error("decoder_layer_step: a position is past the cache's end")
            if pp[b] >= 0 and (kp[b] < 1 or Int(kp[b]) > t_len):
                raise Error("decoder_layer_step: a stepping row's cross keys are not 1 .. T")
        comptime n_vectors = 28 if wtype == DType.int8 else 17
        if weights.dim_size(0) != 14 * d * d or vectors.dim_size(0) != n_vectors * d:
            raise Error("decoder_layer_step: weights are not [14 d^2] and vectors [17 d] ([28 d] for int8 weights)")

        var wp = weights.unsafe_ptr()
        var vp = vectors.unsafe_ptr()
        var xo = x_out.unsafe_ptr()
        var ck = cache_k.unsafe_ptr()
        var cv = cache_v_t.unsafe_ptr()
        var xk = cross_k.unsafe_ptr()
        var xv = cross_v_t.unsafe_ptr()
        var xks = cross_k_scales.unsafe_ptr()
        var xvs = cross_v_scales.unsafe_ptr()
        # scratch shared by the phases: the layer norms' rows, q, k and v [B, d], attention output [B, d],
        # the MLP's hidden layer [B, 4d]
        var xn = alloc[Float32](nb * d)
        var q = alloc[Float32](nb * d)
        var kn = alloc[Float32](nb * d)
        var vn = alloc[Float32](nb * d)
        var att = alloc[Float32](nb * d)
        var hidden = alloc[Float32](nb * 4 * d)
        for i in range(0, nb * d, W):
            xo.store(i, x.unsafe_ptr().load[width=W](i))

        # where each weight and vector starts
        var w_qkv = wp
        var w_out = w_qkv + 3 * d * d
        var w_cq = w_out + d * d
        var w_cout = w_cq + d * d
        var w_fc1 = w_cout + d * d
        var w_fc2 = w_fc1 + 4 * d * d
        var ln1 = vp
        var b_qkv = ln1 + 2 * d
        var b_out = b_qkv + 3 * d
        var ln2 = b_out + d
        var b_cq = ln2 + 2 * d
        var b_cout = b_cq + d
        var ln3 = b_cout + d
        var b_fc1 = ln3 + 2 * d
        var b_fc2 = b_fc1 + 4 * d
        var s_qkv = b_fc2 + d  # int8 weights' scales (read only for int8)
        var s_out = s_qkv + 3 * d
        var s_cq = s_out + d
        var s_cout = s_cq + d
        var s_fc1 = s_cout + d
        var s_fc2 = s_fc1 + 4 * d

        # work items of the phases below: rows for the layer norms, blocks of weight rows for the
        # linears, heads for attention
        var per3 = rows_per_item(3 * d)
        var per = rows_per_item(d)
        var per4 = rows_per_item(4 * d)
        var items = stack_allocation[PHASES, Int]()
        items[0] = nb
        items[1] = (3 * d + per3 - 1) // per3
        items[2] = nb * heads
        items[3] = (d + per - 1) // per
        items[4] = nb
        items[5] = items[3]
        items[6] = nb * heads
        items[7] = items[3]
        items[8] = nb
        items[9] = (4 * d + per4 - 1) // per4
        items[10] = items[3]

        # 1. q, k, v = ln1(x) @ W_qkv^T + b; each key and value joins the cache now, before any row
        # of its group attends (a row reads positions below its own only, its own key from kn and vn)
        def store_qkv(b: Int, j: Int, v: Float32) {var q, var kn, var vn, var ck, var cv, var d, var dh, var s_len,
                                                   var pp, var group}:
            var at = (b // group) * d  # the cache row's heads start at at * s_len
            if j < d:
                q[b * d + j] = v
            elif j < 2 * d:
                kn[b * d + j - d] = v
                ck[(at + j - d - (j - d) % dh) * s_len + Int(pp[b]) * dh + (j - d) % dh] = v
            else:
                vn[b * d + j - 2 * d] = v
                cv[(at + j - 2 * d) * s_len + Int(pp[b])] = v

        # 2. self-attention over the cache and this token
        def self_head(bh: Int) {var q, var kn, var vn, var ck, var cv, var att, var dh, var s_len, var pp, var heads,
                                var group}:
            var pos = Int(pp[bh // heads])
            if pos < 0:
                return
            var o = bh * dh  # row b, head h: b * d + h * dh
            var ch = (bh // heads // group) * heads + bh % heads  # the head in the cache
            attend(q + o, ck + ch * s_len * dh, cv + ch * dh * s_len, pos, s_len, dh, kn + o, vn + o, True, att + o)

        # 3, 7, 10. x += att @ W_out^T + b (and the cross-attention's and the MLP's residual linears)
        def add_to_x(b: Int, j: Int, v: Float32) {var xo, var d}:
            xo[b * d + j] += v

        # 5. q = ln2(x) @ W_cq^T + b
        def store_q(b: Int, j: Int, v: Float32) {var q, var d}:
            q[b * d + j] = v

        # 6. cross-attention over the audio
        def cross_head(bh: Int) {var q, var xk, var xv, var xks, var xvs, var att, var dh, var t_len, var pp,
                                 var kp, var heads, var group}:
            if pp[bh // heads] < 0:
                return
            var o = bh * dh
            var keys = Int(kp[bh // heads])
            var ch = (bh // heads // group) * heads + bh % heads  # the head in cross K/V
            comptime if ctype == DType.int8:
                attend_int8(q + o, xk.bitcast[Int8]() + ch * t_len * dh, xv.bitcast[Int8]() + ch * dh * t_len,
                            xks + ch * t_len, xvs + ch * t_len, keys, t_len, dh, att + o)
            else:
                attend(q + o, xk.bitcast[Float32]() + ch * t_len * dh, xv.bitcast[Float32]() + ch * dh * t_len,
                       keys, t_len, dh, q, q, False, att + o)

        # 9. hidden = gelu(ln3(x) @ W_fc1^T + b): the sums stored, then GELU over them W lanes at a time
        def store_hidden(b: Int, j: Int, v: Float32) {var hidden, var d}:
            hidden[b * 4 * d + j] = v

        def phase(p: Int, item: Int) {var xo, var store_qkv, var self_head, var add_to_x, var store_q,
                                       var cross_head, var store_hidden, var xn, var att, var hidden, var pp,
                                       var nb, var d, var per, var per3, var per4, var w_qkv, var w_out,
                                       var w_cq, var w_cout, var w_fc1, var w_fc2, var ln1, var ln2, var ln3,
                                       var b_qkv, var b_out, var b_cq, var b_cout, var b_fc1, var b_fc2,
                                       var s_qkv, var s_out, var s_cq, var s_cout, var s_fc1, var s_fc2}:
            if p == 0 or p == 4 or p == 8:  # a stepping row's layer norm, into xn
                var gamma = ln1 if p == 0 else (ln2 if p == 4 else ln3)
                if pp[item] >= 0:
                    layer_norm(xo + item * d, d, gamma, gamma + d, xn + item * d)
            elif p == 1:
                rows_linear[wtype](xn, d, pp, nb, w_qkv, s_qkv, b_qkv, item * per3, min(item * per3 + per3, 3 * d),
                                   store_qkv)
            elif p == 2:
                self_head(item)
            elif p == 3:
                rows_linear[wtype](att, d, pp, nb, w_out, s_out, b_out, item * per, min(item * per + per, d), add_to_x)
            elif p == 5:
                rows_linear[wtype](xn, d, pp, nb, w_cq, s_cq, b_cq, item * per, min(item * per + per, d), store_q)
            elif p == 6:
                cross_head(item)
            elif p == 7:
                rows_linear[wtype](att, d, pp, nb, w_cout, s_cout, b_cout, item * per, min(item * per + per, d),
                                   add_to_x)
            elif p == 9:
                var j0 = item * per4
                var j1 = min(j0 + per4, 4 * d)
                rows_linear[wtype](xn, d, pp, nb, w_fc1, s_fc1, b_fc1, j0, j1, store_hidden)
                for b in range(nb):
                    if pp[b] >= 0:
                        gelu_in_place(hidden + b * 4 * d, j0, j1)
            else:
                rows_linear[wtype](hidden, 4 * d, pp, nb, w_fc2, s_fc2, b_fc2, item * per, min(item * per + per, d),
                                   add_to_x)
        share_phases(items, PHASES, phase)
        xn.free()
        q.free()
        kn.free()
        vn.free()
        att.free()
        hidden.free()


@extensibility.register("token_embedding")
struct TokenEmbedding:
    """The token step's input: x[b] = table[tokens[b]] (float16, widened) + pos[max(positions[b], 0)]
    (a row at a negative position sits the step out: it reads position 0). tokens int64 [B, 1],
    positions int64 [B], table float16 [V, d], pos float32 [S, d] -> x float32 [B, d]. CPU only:
    one op instead of MAX's gathers, cast and add, which took a cold compile seconds each."""

    @staticmethod
    def execute[target: StaticString](
        x: OutputTensor[dtype=DType.float32, rank=2, ...],
        tokens: InputTensor[dtype=DType.int64, rank=2, ...],
        positions: InputTensor[dtype=DType.int64, rank=1, ...],
        table: InputTensor[dtype=DType.float16, rank=2, ...],
        pos: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("token_embedding runs on the CPU only")
        var nb = tokens.dim_size(0)
        var d = table.dim_size(1)
        if positions.dim_size(0) != nb or pos.dim_size(1) != d or x.dim_size(1) != d:
            raise Error("token_embedding: tokens [B, 1], positions [B], table [V, d], pos [S, d]")
        for b in range(nb):
            var token = Int(tokens.unsafe_ptr()[b * tokens.dim_size(1)])
            var at = max(Int(positions.unsafe_ptr()[b]), 0)
            if token < 0 or token >= table.dim_size(0) or at >= pos.dim_size(0):
                raise Error("token_embedding: a token or a position is out of range")
            var row = table.unsafe_ptr() + token * d
            var p = pos.unsafe_ptr() + at * d
            for i in range(d):
                x.unsafe_ptr()[b * d + i] = row[i].cast[DType.float32]() + p[i]
