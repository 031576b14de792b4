# One decoder layer for one new token of each of B sequences (a greedy or beam step on the CPU) as
# a single op. A step is bound by reading weights and cross K/V (~75 MB for tiny.en), but as ~100
# MAX ops it took well above that floor: each op's dispatch and its cold start on a few hundred KB
# cost more than the bytes. Here a layer is 8 phases over the same arithmetic, run by one task
# per thread (`share_phases`, cheaper than a `sync_parallelize` per phase): the linears are `few_row_linear`'s one-row path (float16-stored weights widened in
# registers, so the same float32 products; int8 weights and their scales under --precision int8),
# the attentions `few_row_attention`'s (the cross-attention's `attend_int8` over int8 keys and values
# under --precision int8). With B rows each
# block of weight rows is multiplied with every row while it is in cache: read from memory once.
# Each row has its own position, so sequences of different lengths (decodings of different
# requests) step together; the op writes each row's new key and value into the cache itself.
import extensibility
from extensibility import InputTensor, OutputTensor, _MutableInputTensor as MutableInputTensor
from max.gpu.host import DeviceContext
from std.math import erf, sqrt
from std.memory import alloc, stack_allocation

from .attention import MAX_KEYS, W8, attend, attend_int8
from .linear import dot_rows, finish, rows_per_item
from .threads import share_phases

comptime W = 8  # float32 lanes per SIMD vector (AVX2)
comptime MAX_D = 1280  # large's width: the scratch vectors live on the stack
comptime EPS = Float32(1e-5)
comptime PHASES = 8
comptime F32P = UnsafePointer[Float32, ...]


def layer_norm[o: MutOrigin](x: F32P, d: Int, gamma: F32P, beta: F32P, dst: UnsafePointer[Float32, o]):
    """dst = (x - mean) / sqrt(var + eps) * gamma + beta over d values (d % 8 == 0)."""
    var s = SIMD[DType.float32, W](0)
    for i in range(0, d, W):
        s += x.load[width=W](i)
    var mean = s.reduce_add() / Float32(d)
    var v = SIMD[DType.float32, W](0)
    for i in range(0, d, W):
        var c = x.load[width=W](i) - mean
        v += c * c
    var inv = 1 / sqrt(v.reduce_add() / Float32(d) + EPS)
    for i in range(0, d, W):
        dst.store(i, (x.load[width=W](i) - mean) * inv * gamma.load[width=W](i) + beta.load[width=W](i))


@extensibility.register("decoder_layer_step")
struct DecoderLayerStep:
    """One residual attention block of the decoder for one new token of each of B sequences:
    x += attn(ln(x)); x += cross_attn(ln(x)); x += mlp(ln(x)).

    x float32 [B, d]; weights float16 (or int8) [14 d^2]: attn.qkv [3d, d], attn.out [d, d],
    cross_attn.query [d, d], cross_attn.out [d, d], mlp.0 [4d, d], mlp.2 [d, 4d], each [d_out,
    d_in] row-major; vectors float32 [17 d] (int8: [28 d]): attn_ln weight and bias, attn.qkv
    bias [3d], attn.out bias, cross_attn_ln weight and bias, cross_attn.query bias,
    cross_attn.out bias, mlp_ln weight and bias, mlp.0 bias [4d], mlp.2 bias (int8: then the
    six weights' scales per output row, [11 d] in the weights' order); the self-attention cache K [B, H, S, Dh]
    and V^T [B, H, Dh, S], row b holding positions 0 .. positions[b] - 1, into which the op writes
    row b's new key and value at positions[b]; cross K [B, H, T, Dh] and V^T [B, H, Dh, T], float32
    or (--precision int8) int8 with float32 scales per key and per value, K scales and V scales
    [B, H, T] ([0, 0, 0] for float32 ones: unread); positions int64 [B], a negative one for a row
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
        if (cache_k.dim_size(0) != nb or cross_k.dim_size(0) != nb or positions.dim_size(0) != nb
                or cross_keys.dim_size(0) != nb):
            raise Error("decoder_layer_step: x, the caches, cross K/V, the positions and cross keys disagree on B")
        comptime if ctype == DType.int8:
            var k_ok = (cross_k_scales.dim_size(0) == nb and cross_k_scales.dim_size(1) == heads
                        and cross_k_scales.dim_size(2) == t_len)
            var v_ok = (cross_v_scales.dim_size(0) == nb and cross_v_scales.dim_size(1) == heads
                        and cross_v_scales.dim_size(2) == t_len)
            if not (k_ok and v_ok):
                raise Error("decoder_layer_step: int8 cross K/V need scales [B, H, T]")
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
        # scratch shared by the phases: q, k and v [B, d], attention output [B, d], the MLP's hidden layer [B, 4d]
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

        # work items of the phases below: blocks of weight rows for the linears, heads for attention
        var per3 = rows_per_item(3 * d)
        var per = rows_per_item(d)
        var per4 = rows_per_item(4 * d)
        var items = stack_allocation[PHASES, Int]()
        items[0] = (3 * d + per3 - 1) // per3
        items[1] = nb * heads
        items[2] = (d + per - 1) // per
        items[3] = items[2]
        items[4] = nb * heads
        items[5] = items[2]
        items[6] = (4 * d + per4 - 1) // per4
        items[7] = items[2]

        # 1. q, k, v = ln1(x) @ W_qkv^T + b
        def qkv(item: Int) {var xo, var q, var kn, var vn, var w_qkv, var ln1, var b_qkv, var s_qkv, var d, var per3, var nb, var pp}:
            var xn = stack_allocation[MAX_D, Float32]()
            var j0 = item * per3
            var j1 = min(j0 + per3, 3 * d)
            var y = stack_allocation[4 * MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                layer_norm(xo + b * d, d, ln1, ln1 + d, xn)
                dot_rows(xn, w_qkv, d, j0, j1, y)
                for j in range(j0, j1):
                    var v = finish[wtype](y[j - j0], s_qkv, j, b_qkv[j])
                    if j < d:
                        q[b * d + j] = v
                    elif j < 2 * d:
                        kn[b * d + j - d] = v
                    else:
                        vn[b * d + j - 2 * d] = v

        # 2. self-attention over the cache and this token, whose key and value then join the cache
        def self_head(bh: Int) {var q, var kn, var vn, var ck, var cv, var att, var dh, var s_len, var pp, var heads}:
            var pos = Int(pp[bh // heads])
            if pos < 0:
                return
            var o = bh * dh  # row b, head h: b * d + h * dh
            var k_head = ck + bh * s_len * dh
            var v_t_head = cv + bh * dh * s_len
            attend(q + o, k_head, v_t_head, pos, s_len, dh, kn + o, vn + o, True, att + o)
            for i in range(dh):
                k_head[pos * dh + i] = kn[o + i]
                v_t_head[i * s_len + pos] = vn[o + i]

        # 3. x += att @ W_out^T + b, and the same shape of phase for each residual linear below
        def out_proj(item: Int) {var xo, var att, var w_out, var b_out, var s_out, var d, var per, var nb, var pp}:
            var j0 = item * per
            var j1 = min(j0 + per, d)
            var y = stack_allocation[MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                dot_rows(att + b * d, w_out, d, j0, j1, y)
                for j in range(j0, j1):
                    xo[b * d + j] += finish[wtype](y[j - j0], s_out, j, b_out[j])

        # 4. q = ln2(x) @ W_cq^T + b
        def cross_query(item: Int) {var xo, var q, var w_cq, var ln2, var b_cq, var s_cq, var d, var per, var nb, var pp}:
            var xn = stack_allocation[MAX_D, Float32]()
            var j0 = item * per
            var j1 = min(j0 + per, d)
            var y = stack_allocation[MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                layer_norm(xo + b * d, d, ln2, ln2 + d, xn)
                dot_rows(xn, w_cq, d, j0, j1, y)
                for j in range(j0, j1):
                    q[b * d + j] = finish[wtype](y[j - j0], s_cq, j, b_cq[j])

        # 5. cross-attention over the audio
        def cross_head(bh: Int) {var q, var xk, var xv, var xks, var xvs, var att, var dh, var t_len, var pp,
                                 var kp, var heads}:
            if pp[bh // heads] < 0:
                return
            var o = bh * dh
            var keys = Int(kp[bh // heads])
            comptime if ctype == DType.int8:
                attend_int8(q + o, xk.bitcast[Int8]() + bh * t_len * dh, xv.bitcast[Int8]() + bh * dh * t_len,
                            xks + bh * t_len, xvs + bh * t_len, keys, t_len, dh, att + o)
            else:
                attend(q + o, xk.bitcast[Float32]() + bh * t_len * dh, xv.bitcast[Float32]() + bh * dh * t_len,
                       keys, t_len, dh, q, q, False, att + o)

        # 6. x += att @ W_cout^T + b
        def cross_out(item: Int) {var xo, var att, var w_cout, var b_cout, var s_cout, var d, var per, var nb, var pp}:
            var j0 = item * per
            var j1 = min(j0 + per, d)
            var y = stack_allocation[MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                dot_rows(att + b * d, w_cout, d, j0, j1, y)
                for j in range(j0, j1):
                    xo[b * d + j] += finish[wtype](y[j - j0], s_cout, j, b_cout[j])

        # 7. hidden = gelu(ln3(x) @ W_fc1^T + b)
        def fc1(item: Int) {var xo, var hidden, var w_fc1, var ln3, var b_fc1, var s_fc1, var d, var per4, var nb, var pp}:
            var xn = stack_allocation[MAX_D, Float32]()
            var j0 = item * per4
            var j1 = min(j0 + per4, 4 * d)
            var y = stack_allocation[4 * MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                layer_norm(xo + b * d, d, ln3, ln3 + d, xn)
                dot_rows(xn, w_fc1, d, j0, j1, y)
                for j in range(j0, j1):
                    var v = finish[wtype](y[j - j0], s_fc1, j, b_fc1[j])
                    hidden[b * 4 * d + j] = 0.5 * v * (1 + erf(v * 0.7071067811865476))

        # 8. x += hidden @ W_fc2^T + b
        def fc2(item: Int) {var xo, var hidden, var w_fc2, var b_fc2, var s_fc2, var d, var per, var nb, var pp}:
            var j0 = item * per
            var j1 = min(j0 + per, d)
            var y = stack_allocation[MAX_D, Float32]()
            for b in range(nb):
                if pp[b] < 0:
                    continue
                dot_rows(hidden + b * 4 * d, w_fc2, 4 * d, j0, j1, y)
                for j in range(j0, j1):
                    xo[b * d + j] += finish[wtype](y[j - j0], s_fc2, j, b_fc2[j])

        def phase(p: Int, item: Int) {var qkv, var self_head, var out_proj, var cross_query, var cross_head,
                                       var cross_out, var fc1, var fc2}:
            if p == 0:
                qkv(item)
            elif p == 1:
                self_head(item)
            elif p == 2:
                out_proj(item)
            elif p == 3:
                cross_query(item)
            elif p == 4:
                cross_head(item)
            elif p == 5:
                cross_out(item)
            elif p == 6:
                fc1(item)
            else:
                fc2(item)
        share_phases(items, PHASES, phase)
        q.free()
        kn.free()
        vn.free()
        att.free()
        hidden.free()
