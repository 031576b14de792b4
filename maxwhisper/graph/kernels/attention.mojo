# Decoder-step attention for the CPU as one kernel: MAX's matmul/softmax ops spend most of a
# one-row attention on per-op dispatch and 4-D matrix-vector kernels; this reads K and
# V^T once at memory speed. Used through `layers.few_row_attention` for one query row per call.
# `attend_int8` is the cross-attention of `decoder_layer.mojo` under --precision int8, over keys and
# values stored as int8 with a scale each: a quarter of float32's bytes, which every step reads.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import exp, sqrt
from std.memory import stack_allocation
from std.memory.unsafe import bitcast

from .threads import share_items

comptime MAX_KEYS = 2048
comptime W = 8  # float32 lanes per SIMD vector (AVX2)
comptime W8 = 16  # lanes of `attend_int8`'s sums (its order is its own: no float32 result to match)
comptime F32P = UnsafePointer[Float32, ...]
comptime I8P = UnsafePointer[Int8, ...]


@extensibility.register("few_row_attention")
struct FewRowAttention:
    """softmax(q k^T / sqrt(Dh)) v, one work item per (batch, head, query row).

    q [B, H, n, Dh], k [B, H, S, Dh], v_t [B, H, Dh, S] (values transposed), limit int64 [n]:
    query row i attends keys 0 .. limit[i] - 1. Output [B, H, n, Dh]. float32, CPU only.
    """

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=DType.float32, rank=4, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v_t: InputTensor[dtype=DType.float32, rank=4, ...],
        limit: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("few_row_attention runs on the CPU only")
        var n = q.dim_size(2)
        var dh = q.dim_size(3)
        var s_len = k.dim_size(2)
        if s_len > MAX_KEYS or dh % W != 0:
            raise Error("few_row_attention: more than 2048 keys, or Dh not a multiple of 8")
        var qp = q.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v_t.unsafe_ptr()
        var lp = limit.unsafe_ptr()
        var op = output.unsafe_ptr()

        def row(item: Int) {var qp, var kp, var vp, var lp, var op, var n, var dh, var s_len}:
            var head = item // n  # flat (batch, head) index
            var keys = min(Int(lp[unsafe_offset=item % n]), s_len)
            attend(qp + item * dh, kp + head * s_len * dh, vp + head * dh * s_len, keys, s_len, dh, qp, qp, False,
                   op + item * dh)

        share_items(q.dim_size(0) * q.dim_size(1) * n, row)


def attend[o: MutOrigin](q: F32P, k: F32P, v_t: F32P, keys: Int, stride: Int, dh: Int, new_k: F32P, new_v: F32P,
           has_new: Bool, dst: UnsafePointer[Float32, o]):
    """One head: softmax(q k^T / sqrt(dh)) v over keys 0 .. keys - 1 of k [*, dh] and v_t [dh,
    stride], plus (has_new) one more key new_k [dh] with value new_v [dh] -> dst [dh]."""
    var scale = Float32(1) / sqrt(Float32(dh))
    var p = stack_allocation[MAX_KEYS + 1, Float32]()
    var s = 0
    while s < keys:
        var a0 = SIMD[DType.float32, W](0)
        var a1 = SIMD[DType.float32, W](0)
        var a2 = SIMD[DType.float32, W](0)
        var a3 = SIMD[DType.float32, W](0)
        var k0 = k + s * dh
        var quad = s + 4 <= keys
        for d in range(0, dh, W):
            var qv = q.load[width=W](d)
            a0 += qv * k0.load[width=W](d)
            if quad:
                a1 += qv * k0.load[width=W](dh + d)
                a2 += qv * k0.load[width=W](2 * dh + d)
                a3 += qv * k0.load[width=W](3 * dh + d)
        p[s] = a0.reduce_add() * scale
        if quad:
            p[s + 1] = a1.reduce_add() * scale
            p[s + 2] = a2.reduce_add() * scale
            p[s + 3] = a3.reduce_add() * scale
            s += 4
        else:
            s += 1
    var n = keys
    if has_new:
        var a = SIMD[DType.float32, W](0)
        for d in range(0, dh, W):
            a += q.load[width=W](d) * new_k.load[width=W](d)
        p[keys] = a.reduce_add() * scale
        n = keys + 1

    var inv = Float32(1) / exp_sum(p, n)

    var kfull = keys - keys % W
    var full4 = keys - keys % (4 * W)
    for d in range(dh):
        var vr = v_t + d * stride
        var a0 = SIMD[DType.float32, W](0)
        var a1 = SIMD[DType.float32, W](0)
        var a2 = SIMD[DType.float32, W](0)
        var a3 = SIMD[DType.float32, W](0)
        for j in range(0, full4, 4 * W):
            a0 += p.load[width=W](j) * vr.load[width=W](j)
            a1 += p.load[width=W](j + W) * vr.load[width=W](j + W)
            a2 += p.load[width=W](j + 2 * W) * vr.load[width=W](j + 2 * W)
            a3 += p.load[width=W](j + 3 * W) * vr.load[width=W](j + 3 * W)
        for j in range(full4, kfull, W):
            a0 += p.load[width=W](j) * vr.load[width=W](j)
        var sum = ((a0 + a1) + (a2 + a3)).reduce_add()
        for j in range(kfull, keys):
            sum += p[j] * vr[j]
        if has_new:
            sum += p[keys] * new_v[d]
        dst[d] = sum * inv


def attend_int8[o: MutOrigin](q: F32P, k: I8P, v_t: I8P, k_scale: F32P, v_scale: F32P, keys: Int, stride: Int,
                              dh: Int, dst: UnsafePointer[Float32, o]):
    """`attend` over int8 keys and values, each with a float32 scale of its own (`quantized` in
    graph/encoder.py): key s is k[s, :] * k_scale[s], and value s is v_t[:, s] * v_scale[s], over
    keys 0 .. keys - 1 of k [*, dh] and v_t [dh, stride] (dh a multiple of 16). The scales come out of the sums: a score
    is (q . k[s]) k_scale[s], and the softmax weights are multiplied by v_scale before the values."""
    comptime V = SIMD[DType.float32, W8]
    var scale = Float32(1) / sqrt(Float32(dh))
    var p = stack_allocation[MAX_KEYS, Float32]()
    var s = 0
    while s < keys:
        var a0 = V(0)
        var a1 = V(0)
        var a2 = V(0)
        var a3 = V(0)
        var k0 = k + s * dh
        var quad = s + 4 <= keys
        for d in range(0, dh, W8):
            var qv = q.load[width=W8](d)
            a0 += qv * k0.load[width=W8](d).cast[DType.float32]()
            if quad:
                a1 += qv * k0.load[width=W8](dh + d).cast[DType.float32]()
                a2 += qv * k0.load[width=W8](2 * dh + d).cast[DType.float32]()
                a3 += qv * k0.load[width=W8](3 * dh + d).cast[DType.float32]()
        p[s] = a0.reduce_add() * scale * k_scale[s]
        if quad:
            p[s + 1] = a1.reduce_add() * scale * k_scale[s + 1]
            p[s + 2] = a2.reduce_add() * scale * k_scale[s + 2]
            p[s + 3] = a3.reduce_add() * scale * k_scale[s + 3]
            s += 4
        else:
            s += 1

    var inv = Float32(1) / exp_sum[fast=True](p, keys)
    var full = keys - keys % W8
    for j in range(0, full, W8):
        p.store(j, p.load[width=W8](j) * v_scale.load[width=W8](j) * inv)
    for j in range(full, keys):
        p[j] = p[j] * v_scale[j] * inv

    var full4 = keys - keys % (4 * W8)
    for d in range(dh):
        var vr = v_t + d * stride
        var a0 = V(0)
        var a1 = V(0)
        var a2 = V(0)
        var a3 = V(0)
        for j in range(0, full4, 4 * W8):
            a0 += p.load[width=W8](j) * vr.load[width=W8](j).cast[DType.float32]()
            a1 += p.load[width=W8](j + W8) * vr.load[width=W8](j + W8).cast[DType.float32]()
            a2 += p.load[width=W8](j + 2 * W8) * vr.load[width=W8](j + 2 * W8).cast[DType.float32]()
            a3 += p.load[width=W8](j + 3 * W8) * vr.load[width=W8](j + 3 * W8).cast[DType.float32]()
        for j in range(full4, full, W8):
            a0 += p.load[width=W8](j) * vr.load[width=W8](j).cast[DType.float32]()
        var sum = ((a0 + a1) + (a2 + a3)).reduce_add()
        for j in range(full, keys):
            sum += p[j] * Float32(vr[j])
        dst[d] = sum


def row_max[w: Int, o: Origin](row: UnsafePointer[Float32, o], n: Int) -> Float32:
    """max(row[:n]), w lanes at a time (the same value for any w)."""
    var full = n - n % w
    var mv = SIMD[DType.float32, w](-3.0e38)
    for j in range(0, full, w):
        mv = max(mv, row.load[width=w](j))
    var m = mv.reduce_max()
    for j in range(full, n):
        m = max(m, row[j])
    return m


@always_inline
def exp_nonpositive[w: Int](x: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    """exp(x) for x <= 0 (a softmax's x - max) in about half `exp`'s time, within 2e-7 of it:
    2^n p(r), n = round(x / ln 2), r = x - n ln 2, p Cephes' degree-5 polynomial. x below -87
    gives exp(-87), ~1.6e-38."""
    comptime V = SIMD[DType.float32, w]
    var xc = max(x, V(-87))
    var n = round(xc * 1.4426950408889634)
    var r = n.fma(V(-0.693145751953125), xc)  # ln 2 in two parts (Cody-Waite) keeps r accurate
    r = n.fma(V(-1.428606765330187e-06), r)
    var p = V(1.9875691500e-4).fma(r, V(1.3981999507e-3))
    p = p.fma(r, V(8.3334519073e-3))
    p = p.fma(r, V(4.1665795894e-2))
    p = p.fma(r, V(1.6666665459e-1))
    p = p.fma(r, V(5.0000001201e-1))
    p = (p * r).fma(r, r) + 1
    return bitcast[DType.float32, w](bitcast[DType.int32, w](p) + (n.cast[DType.int32]() << 23))


@always_inline
def softmax_exp[w: Int, fast: Bool](x: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    """exp(x) for a softmax's x - max: `exp_nonpositive` where `fast`, else `exp`."""
    comptime if fast:
        return exp_nonpositive[w](x)
    return exp(x)


def exp_sum[o: MutOrigin, fast: Bool = False](row: UnsafePointer[Float32, o], n: Int) -> Float32:
    """row[j] = exp(row[j] - max(row)) for j < n, in place; returns their sum (softmax's
    numerators and denominator). `fast`: `exp_nonpositive` (int8's paths; fp32 keeps `exp`)."""
    var full = n - n % W
    var m = row_max[W](row, n)
    var tv = SIMD[DType.float32, W](0)
    for j in range(0, full, W):
        var e = softmax_exp[W, fast](row.load[width=W](j) - m)
        row.store(j, e)
        tv += e
    var total = tv.reduce_add()
    for j in range(full, n):
        var e = softmax_exp[1, fast](row[j] - m)
        row[j] = e
        total += e
    return total
