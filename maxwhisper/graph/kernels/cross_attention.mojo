# A prompt's cross-attention for the CPU, as one kernel: each head's keys and values go straight
# into the 16-wide panels of `encoder_attention`'s register tiles (int8 ones widened with their
# scales), which then run the attention. MAX's fused flash attention over the keys and values as
# the graph lays them out took most of a prompt's time. With `int16` (where int8's encoder
# attention runs in 16-bit integers) int8 keys and values go into its int16 panels instead and both
# products run `vpmaddwd` (`rows_int16`).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import sqrt
from std.memory import alloc, stack_allocation

from .encoder_attention import MAX_DH, PV_TOP, S16, rows, rows_int16
from .linear import F32, MR, NR, TILE_PANELS, V16
from .threads import share_phases


@extensibility.register("cross_attention")
struct CrossAttention:
    """softmax(q k^T / sqrt(Dh)) v over all T frames, per head.

    q float32 [B, H, n, Dh], k float32 [B, H, T, Dh], v_t float32 [B, H, Dh, T] -> float32
    [B, H, n, Dh]. CPU only (`attend_frames`)."""

    @staticmethod
    def execute[target: StaticString, tile_rows: Int, tile_panels: Int](
        output: OutputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=DType.float32, rank=4, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v_t: InputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("cross_attention runs on the CPU only")
        var t_len = k.dim_size(2)
        if (k.dim_size(0) * k.dim_size(1) != q.dim_size(0) * q.dim_size(1) or k.dim_size(3) != q.dim_size(3)
                or v_t.dim_size(2) != q.dim_size(3) or v_t.dim_size(3) != t_len):
            raise Error("cross_attention: k or v_t do not match q [B, H, n, Dh] and T frames")
        var qp = q.unsafe_ptr()
        attend_frames[tile_rows, tile_panels, DType.float32, False, False](
            output.unsafe_ptr(), qp, k.unsafe_ptr(), v_t.unsafe_ptr(), qp, qp,  # no scales: q's pointer, unread
            q.dim_size(0) * q.dim_size(1), q.dim_size(2), q.dim_size(3), t_len)


@extensibility.register("cross_attention_int8")
struct CrossAttentionInt8:
    """softmax(q k^T / sqrt(Dh)) v over all T frames, per head, with k = k_q x k_scale and
    v = v_q x v_scale (a scale per key and per value, `decoder.cross_layout`).

    q float32 [B, H, n, Dh], k int8 [B, H, T, Dh], v_t int8 [B, H, Dh, T], k_scales and v_scales
    float32 [B, H, T] -> float32 [B, H, n, Dh]. CPU only (`attend_frames`). `int16`: q quantized per
    row to +-2047 against the keys as they are, each value dim requantized to +-32767 over the T
    frames, the softmax's weights to +-32767 of their row's sum: `encoder_attention`'s int16 sums."""

    @staticmethod
    def execute[target: StaticString, tile_rows: Int, tile_panels: Int, int16: Bool](
        output: OutputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=DType.float32, rank=4, ...],
        k: InputTensor[dtype=DType.int8, rank=4, ...],
        v_t: InputTensor[dtype=DType.int8, rank=4, ...],
        k_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        v_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("cross_attention_int8 runs on the CPU only")
        var heads = q.dim_size(0) * q.dim_size(1)  # (batch, head) pairs
        var dh = q.dim_size(3)
        var t_len = k.dim_size(2)
        if (k.dim_size(0) * k.dim_size(1) != heads or k.dim_size(3) != dh or v_t.dim_size(2) != dh
                or v_t.dim_size(3) != t_len or k_scales.dim_size(2) != t_len or v_scales.dim_size(2) != t_len):
            raise Error("cross_attention_int8: k, v_t or the scales do not match q [B, H, n, Dh] and T frames")
        attend_frames[tile_rows, tile_panels, DType.int8, True, int16](
            output.unsafe_ptr(), q.unsafe_ptr(), k.unsafe_ptr(), v_t.unsafe_ptr(), k_scales.unsafe_ptr(),
            v_scales.unsafe_ptr(), heads, q.dim_size(2), dh, t_len)


def attend_frames[tile_rows: Int, tile_panels: Int, dt: DType, scaled: Bool, int16: Bool](
    dst: F32, qp: F32, kp: UnsafePointer[Scalar[dt], MutAnyOrigin], vp: UnsafePointer[Scalar[dt], MutAnyOrigin],
    ksp: F32, vsp: F32, heads: Int, n: Int, dh: Int, t_len: Int,
) raises:
    """The attention of `heads` heads' n query rows over T frames. Phase 1 puts each head's keys
    into panels [T / 16, Dh, 16] (zero past T) and its values into [Dh / 16, T, 16], times their
    scales where `scaled`; phase 2 runs `encoder_attention`'s rows, 4 tiles of query rows of one
    head per work item, with `exp_sum`'s fast exps over int8 keys. `int16` (int8 keys and values):
    `pack_int8`'s int16 panels and `rows_int16`. `tile_rows` and `tile_panels` as `packed_linear`'s."""
    comptime mr = tile_rows if tile_rows else MR
    comptime np = tile_panels if tile_panels else TILE_PANELS
    comptime ROWS = 4 * mr  # query rows per work item
    comptime assert not int16 or dt == DType.int8, "attend_frames: int16 packs int8 keys and values"
    if dh % NR != 0 or dh > MAX_DH:
        raise Error("cross_attention: Dh is not a multiple of 16 up to 128")
    var n_panels = (t_len + NR - 1) // NR
    var t_pad = n_panels * NR
    var groups = (n + ROWS - 1) // ROWS  # work items per head
    var scale = Float32(1) / sqrt(Float32(dh))
    var k_panels = alloc[Float32](heads * t_pad * dh).unsafe_origin_cast[MutAnyOrigin]()  # int16: half used
    var v_panels = alloc[Float32](heads * t_pad * dh).unsafe_origin_cast[MutAnyOrigin]()
    var k_scales = alloc[Float32](heads * t_pad if int16 else 0).unsafe_origin_cast[MutAnyOrigin]()
    var v_scales = alloc[Float32](heads * dh if int16 else 0).unsafe_origin_cast[MutAnyOrigin]()
    var items = stack_allocation[2, Int]()
    items[0] = heads
    items[1] = heads * groups

    def phase(p: Int, item: Int) {var qp, var kp, var vp, var ksp, var vsp, var dst, var k_panels, var v_panels,
                                   var k_scales, var v_scales, var n, var dh, var t_len, var t_pad, var n_panels,
                                   var groups, var scale}:
        if p == 0:
            comptime if int16:
                pack_int8(kp.bitcast[Int8]() + item * t_len * dh, vp.bitcast[Int8]() + item * dh * t_len,
                          ksp + item * t_len, vsp + item * t_len, t_len, t_pad, dh,
                          k_panels.bitcast[Int16]() + item * t_pad * dh, v_panels.bitcast[Int16]() + item * t_pad * dh,
                          k_scales + item * t_pad, v_scales + item * dh)
            else:
                widen[dt, scaled](kp + item * t_len * dh, vp + item * dh * t_len, ksp + item * t_len,
                                  vsp + item * t_len, t_len, dh, k_panels + item * t_pad * dh,
                                  v_panels + item * t_len * dh)
            return
        var head = item // groups  # flat (batch, head) index
        var r0 = (item % groups) * ROWS
        var q = qp + (head * n + r0) * dh
        var out = dst + (head * n + r0) * dh
        var scratch = alloc[Float32](ROWS * (t_pad + 2 * MAX_DH + 1)).unsafe_origin_cast[MutAnyOrigin]()
        comptime if int16:
            var halves = alloc[Int16](ROWS * (t_pad + MAX_DH)).unsafe_origin_cast[MutAnyOrigin]()
            rows_int16[mr, np](q, dh, min(ROWS, n - r0), k_panels.bitcast[Int16]() + head * t_pad * dh,
                               v_panels.bitcast[Int16]() + head * t_pad * dh, k_scales + head * t_pad,
                               v_scales + head * dh, out, dh, dh, t_len, t_pad, n_panels, scale, scratch, halves)
            halves.free()
        else:
            rows[mr, np, dt == DType.int8](q, dh, min(ROWS, n - r0), k_panels + head * t_pad * dh,
                                           v_panels + head * t_len * dh, out, dh, dh, t_len, t_pad, n_panels, scale,
                                           scratch)
        scratch.free()
    share_phases(items, 2, phase)
    k_panels.free()
    v_panels.free()
    k_scales.free()
    v_scales.free()


def pack_int8(k: UnsafePointer[Int8, MutAnyOrigin], v_t: UnsafePointer[Int8, MutAnyOrigin], k_scale: F32, v_scale: F32,
              t_len: Int, t_pad: Int, dh: Int, k_panels: S16, v_panels: S16, k_scales: F32, v_scales: F32):
    """`pack_int16`'s layouts from one head's int8 keys k [T, Dh] and values v_t [Dh, T] with a scale
    per key and per value: the keys as they are (k_scales[t] = k_scale[t]); value dim e of
    v_t[e, t] v_scale[t] requantized to +-32767 over the T frames (v_scales[e]); zero keys and
    values past T up to T_pad."""
    var words = stack_allocation[MAX_DH // 2, Int32]()  # one key's int16 dims pairwise
    var pairs = words.bitcast[Int16]()
    for t in range(t_pad):
        k_scales[t] = k_scale[t] if t < t_len else Float32(1)
        for e in range(0, dh, NR):
            var key = (k + t * dh).load[width=NR](e).cast[DType.int16]() if t < t_len else SIMD[DType.int16, NR](0)
            pairs.store(e, key)
        var panel = k_panels.bitcast[Int32]() + (t // NR) * dh * NR // 2 + t % NR
        for g in range(dh // 2):
            panel[g * NR] = words[g]
    var full = t_len - t_len % NR
    for e in range(dh):
        var row = v_t + e * t_len
        var top = V16(0)
        for t in range(0, full, NR):
            top = max(top, abs(row.load[width=NR](t).cast[DType.float32]() * v_scale.load[width=NR](t)))
        var mx = top.reduce_max()
        for t in range(full, t_len):
            mx = max(mx, abs(row[t].cast[DType.float32]() * v_scale[t]))
        var s = mx / PV_TOP if mx > 0 else Float32(1)
        v_scales[e] = s
        var inv = 1 / s
        var dst = v_panels + (e // NR) * t_pad * NR + 2 * (e % NR)  # keys t and t + 1 side by side
        for t in range(0, full, NR):
            var values = round(row.load[width=NR](t).cast[DType.float32]() * v_scale.load[width=NR](t) * inv)
            var words = values.cast[DType.int16]()
            comptime for i in range(NR):
                dst[(t + i - i % 2) * NR + i % 2] = words[i]
        for t in range(full, t_pad):
            var value = round(row[t].cast[DType.float32]() * v_scale[t] * inv) if t < t_len else Float32(0)
            dst[(t - t % 2) * NR + t % 2] = Int16(value)


def widen[dt: DType, scaled: Bool](k: UnsafePointer[Scalar[dt], MutAnyOrigin], v_t: UnsafePointer[Scalar[dt], MutAnyOrigin],
                                   k_scale: F32, v_scale: F32, t_len: Int, dh: Int, k_panels: F32, v_panels: F32):
    """One head's keys k [T, Dh] and values v_t [Dh, T] (times their scales where `scaled`), in
    float32 into k_panels [T_pad / 16, Dh, 16] (zero past T) and v_panels [Dh / 16, T, 16]."""
    for t in range(t_len + (-t_len) % NR):
        var panel = k_panels + (t // NR) * dh * NR + t % NR
        if t < t_len:
            var s = k_scale[t] if scaled else Float32(1)
            for e in range(dh):
                panel[e * NR] = k[t * dh + e].cast[DType.float32]() * s
        else:
            for e in range(dh):
                panel[e * NR] = 0
    for e in range(dh):
        var row = v_t + e * t_len
        var panel = v_panels + (e // NR) * t_len * NR + e % NR
        for t in range(t_len):
            panel[t * NR] = row[t].cast[DType.float32]() * (v_scale[t] if scaled else Float32(1))
