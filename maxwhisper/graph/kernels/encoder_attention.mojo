# The encoder's self-attention for the CPU as one kernel, straight from the qkv linear's output
# to the attention output projection's input: no head split, key transpose or head merge in
# between. Each head's keys and values are first packed into 16-wide panels, so that both
# products run `packed_linear`'s register tiles (MR query rows x TILE_PANELS panels of 16 keys,
# then of 16 head dims) over contiguous memory. It is faster than MAX's fused CPU flash attention
# over q, k^T, v as the graph's ops lay them out (docs/design.md).
# With `bf16` (the int8 plan, on a CPU with AVX512_BF16) q, the keys, the softmax's numerators and
# the values are rounded to bfloat16 and both products run `packed_linear_bf16`'s `vdpbf16ps` tiles:
# twice the multiply-adds of float32's FMAs, the sums still float32. Compiled for a CPU without it,
# `bf16` runs the float32 path: the Python side reads the host's flags, not the compiler's target.
# With `amx` too (a CPU with AMX, its tiles permitted) both products run on AMX tiles instead, over
# the same bfloat16 panels, which are the tiles' layouts.
# With `int16` (the int8 plan without AVX-512: docs/design.md, "int8 on the CPU") q and the keys are
# quantized to 12 bits per row and per key, the values to 16 bits per head dim, the softmax's
# weights to 16 bits of their row's sum, and both products run `vpmaddwd`: two int16 products into
# an int32 lane, twice the multiply-adds per instruction of float32's FMAs. The int32 sums are exact.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import exp, sqrt
from std.memory import alloc, stack_allocation
from std.memory.unsafe import bitcast

from .amx import AMX_BF16, configure_tiles, release_tiles, tile_dot_bf16, tile_load, tile_store, tile_zero
from .attention import exp_sum, row_max
from .linear import F32, MR, NR, TILE_PANELS, V16, accumulate
from .linear_bf16 import B16, BF16
from .linear_bf16 import accumulate as accumulate_bf16
from .linear_int8 import I32V, LANES, madd
from .threads import share_phases

comptime MAX_DH = 128
comptime QK_TOP = Float32(2047)  # q and the keys: a sum of 128 products stays within int32
comptime PV_TOP = Float32(32767)  # the values, and the softmax's weights, whose sum is at most ~PV_TOP
comptime S16 = UnsafePointer[Int16, MutAnyOrigin]


@extensibility.register("encoder_attention")
struct EncoderAttention:
    """softmax(q k^T / sqrt(Dh)) v over all T positions (no mask), per head.

    qkv float32 [B, T, 3d] (q, k, v side by side, each with its H heads of Dh side by side, as
    the fused qkv linear gives them) -> float32 [B, T, d] (heads side by side). CPU only.
    Phase 1 packs each head's keys as panels [T / 16, Dh, 16] (zero past T) and its values as
    [Dh / 16, T, 16]; phase 2 takes 4 tiles of query rows of one head per work item: their scores,
    an exact softmax (normalised at the end), then p @ v. `tile_rows` and `tile_panels` as
    `packed_linear`'s. `bf16`: the panels [T / 16, Dh / 2, 16, 2] and [Dh / 16, T_pad / 2, 16, 2] in
    bfloat16, pairs of consecutive dims, then of consecutive keys, side by side (`rows_bf16`).
    `amx`: with bf16, the products on AMX tiles where Dh is a multiple of 32, T_pad then a multiple of 32.
    `int16` (not with bf16): the panels as bf16's in int16 (`pack_int16`), a scale per key and per
    value dim beside them, and `rows_int16`.
    """

    @staticmethod
    def execute[
        target: StaticString, heads: Int, tile_rows: Int, tile_panels: Int, bf16: Bool, amx: Bool, int16: Bool
    ](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        qkv: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("encoder_attention runs on the CPU only")
        comptime assert not (int16 and bf16), "encoder_attention: int16 or bf16, not both"
        comptime mr = tile_rows if tile_rows else MR
        comptime np = tile_panels if tile_panels else TILE_PANELS
        comptime ROWS = 4 * mr  # query rows per work item
        var batch = qkv.dim_size(0)
        var t_len = qkv.dim_size(1)
        var d = qkv.dim_size(2) // 3
        var dh = d // heads
        if d * 3 != qkv.dim_size(2) or dh * heads != d or dh % NR != 0 or dh > MAX_DH:
            raise Error("encoder_attention: qkv is not [B, T, 3 d] with d = heads x Dh, Dh a multiple of 16 up to 128")
        comptime TILES = bf16 and amx and AMX_BF16 and ROWS % 16 == 0
        var on_tiles = TILES and dh % 32 == 0
        var key_block = 2 * NR if on_tiles else NR  # the tiles take 32 keys a step: zero keys pad T to that
        var t_pad = (t_len + key_block - 1) // key_block * key_block
        var n_panels = t_pad // NR
        var groups = (t_len + ROWS - 1) // ROWS  # work items per head
        var scale = Float32(1) / sqrt(Float32(dh))
        var src = qkv.unsafe_ptr()
        var dst = output.unsafe_ptr()
        var k_panels = alloc[Float32](batch * heads * t_pad * dh).unsafe_origin_cast[MutAnyOrigin]()
        var v_panels = alloc[Float32](batch * heads * t_pad * dh).unsafe_origin_cast[MutAnyOrigin]()
        var k_scales = alloc[Float32](batch * heads * t_pad if int16 else 0).unsafe_origin_cast[MutAnyOrigin]()
        var v_scales = alloc[Float32](batch * heads * dh if int16 else 0).unsafe_origin_cast[MutAnyOrigin]()
        var items = stack_allocation[2, Int]()
        items[0] = batch * heads
        items[1] = batch * heads * groups

        def phase(p: Int, item: Int) {var src, var dst, var k_panels, var v_panels, var k_scales, var v_scales,
                                       var t_len, var d, var dh, var t_pad, var n_panels, var groups, var scale,
                                       var on_tiles}:
            if p == 0:
                var b = item // heads
                var h = item % heads
                comptime if int16:
                    pack_int16(src + b * t_len * 3 * d, h, t_len, t_pad, d, dh,
                               k_panels.bitcast[Int16]() + item * t_pad * dh,
                               v_panels.bitcast[Int16]() + item * t_pad * dh, k_scales + item * t_pad,
                               v_scales + item * dh)
                elif bf16 and BF16:
                    pack_bf16(src + b * t_len * 3 * d, h, t_len, t_pad, d, dh,
                              k_panels.bitcast[BFloat16]() + item * t_pad * dh,
                              v_panels.bitcast[BFloat16]() + item * t_pad * dh)
                else:
                    pack(src + b * t_len * 3 * d, h, t_len, d, dh, k_panels + item * t_pad * dh,
                         v_panels + item * t_len * dh)
                return
            var head = item // groups  # flat (batch, head) index
            var b = head // heads
            var h = head % heads
            var r0 = (item % groups) * ROWS
            var scratch = alloc[Float32](ROWS * (t_pad + 2 * MAX_DH + 1)).unsafe_origin_cast[MutAnyOrigin]()
            comptime if int16:
                var halves = alloc[Int16](ROWS * (t_pad + MAX_DH)).unsafe_origin_cast[MutAnyOrigin]()
                rows_int16[mr, np](src + (b * t_len + r0) * 3 * d + h * dh, 3 * d, min(ROWS, t_len - r0),
                                   k_panels.bitcast[Int16]() + head * t_pad * dh,
                                   v_panels.bitcast[Int16]() + head * t_pad * dh, k_scales + head * t_pad,
                                   v_scales + head * dh, dst + (b * t_len + r0) * d + h * dh, d, dh, t_len, t_pad,
                                   n_panels, scale, scratch, halves)
                halves.free()
                scratch.free()
                return
            elif bf16 and BF16:
                var halves = alloc[BFloat16](ROWS * (t_pad + MAX_DH)).unsafe_origin_cast[MutAnyOrigin]()
                var q = src + (b * t_len + r0) * 3 * d + h * dh
                var keys = k_panels.bitcast[BFloat16]() + head * t_pad * dh
                var values = v_panels.bitcast[BFloat16]() + head * t_pad * dh
                var out = dst + (b * t_len + r0) * d + h * dh
                var n_rows = min(ROWS, t_len - r0)
                comptime if TILES:
                    if on_tiles:
                        rows_bf16[mr, np, True](q, 3 * d, n_rows, keys, values, out, d, dh, t_len, t_pad, n_panels,
                                                scale, scratch, halves)
                        halves.free()
                        scratch.free()
                        return
                rows_bf16[mr, np, False](q, 3 * d, n_rows, keys, values, out, d, dh, t_len, t_pad, n_panels, scale,
                                         scratch, halves)
                halves.free()
                scratch.free()
                return
            rows[mr, np](src + (b * t_len + r0) * 3 * d + h * dh, 3 * d, min(ROWS, t_len - r0), k_panels + head * t_pad * dh,
                 v_panels + head * t_len * dh, dst + (b * t_len + r0) * d + h * dh, d, dh, t_len, t_pad, n_panels,
                 scale, scratch)
            scratch.free()
        share_phases(items, 2, phase)
        k_panels.free()
        v_panels.free()
        k_scales.free()
        v_scales.free()


def pack(x: F32, h: Int, t_len: Int, d: Int, dh: Int, k_panels: F32, v_panels: F32):
    """Head h's keys and values of one sequence x [T, 3d] into k_panels [T_pad / 16, Dh, 16]
    (zero past T) and v_panels [Dh / 16, T, 16]."""
    for t in range(t_len + (-t_len) % NR):
        var panel = k_panels + (t // NR) * dh * NR + t % NR
        var key = x + t * 3 * d + d + h * dh
        for e in range(dh):
            panel[e * NR] = key[e] if t < t_len else Float32(0)
    for t in range(t_len):
        var value = x + t * 3 * d + 2 * d + h * dh
        for e in range(0, dh, NR):
            (v_panels + (e // NR) * t_len * NR + t * NR).store(0, value.load[width=NR](e))


def rows[mr: Int, np: Int, fast_exp: Bool = False](
    q: F32, ldq: Int, n_rows: Int, k_panels: F32, v_panels: F32, dst: F32, ldo: Int, dh: Int, t_len: Int, t_pad: Int,
    n_panels: Int, scale: Float32, scratch: F32,
):
    """Attention of n_rows <= 4 mr query rows (ldq apart) of one head, written ldo apart at dst.
    Rows past n_rows repeat the last one and are not stored. `fast_exp`: `exp_sum`'s fast exps."""
    comptime ROWS = 4 * mr
    var p = scratch  # scores, then exp(score - max) [ROWS, T_pad]
    var q_t = p + ROWS * t_pad  # per tile of mr rows, q transposed [Dh, mr] and scaled
    var acc = q_t + ROWS * MAX_DH  # p @ v [ROWS, Dh]
    var inv_sum = acc + ROWS * MAX_DH  # 1 / the sum of each row's exps
    var tiles = (n_rows + mr - 1) // mr  # of the 4, those with rows to compute
    for i in range(tiles * mr):
        var row = q + min(i, n_rows - 1) * ldq
        for e in range(dh):
            q_t[(i // mr) * dh * mr + e * mr + i % mr] = row[e] * scale

    var c = 0
    while c < n_panels:  # scores: np panels of 16 keys (the panels left one at a time) against mr rows
        var whole = c + np <= n_panels
        for t in range(tiles):
            if whole:
                scores[mr, np](q_t + t * dh * mr, dh, k_panels + c * dh * NR, p + t * mr * t_pad + c * NR, t_pad)
            else:
                scores[mr, 1](q_t + t * dh * mr, dh, k_panels + c * dh * NR, p + t * mr * t_pad + c * NR, t_pad)
        c += np if whole else 1

    for i in range(tiles * mr):  # exp(score - row max), and 1 / the row's sum
        inv_sum[i] = 1 / exp_sum[fast=fast_exp](p + i * t_pad, t_len)

    for t in range(tiles):  # p @ v, np x 16 head dims at a time over every key
        var e0 = 0
        while e0 < dh:
            if e0 + np * NR <= dh:
                p_v[mr, np](p + t * mr * t_pad, t_pad, v_panels + e0 * t_len, t_len, acc + t * mr * dh + e0, dh)
                e0 += np * NR
            else:
                p_v[mr, 1](p + t * mr * t_pad, t_pad, v_panels + e0 * t_len, t_len, acc + t * mr * dh + e0, dh)
                e0 += NR
    for i in range(n_rows):
        for e in range(0, dh, NR):
            (dst + i * ldo).store(e, acc.load[width=NR](i * dh + e) * inv_sum[i])


@always_inline
def scores[mr: Int, np: Int](q_t: F32, dh: Int, k_panels: F32, dst: F32, t_pad: Int):
    """dst[r, 16 p : 16 p + 16] = q[r] . keys of panel p, for r < mr and p < np (q_t [Dh, mr])."""
    var acc = stack_allocation[mr * np, V16]()
    accumulate[mr, np](acc, q_t, 1, mr, mr, k_panels, dh * NR, dh)
    comptime for r in range(mr):
        comptime for pn in range(np):
            dst.store(r * t_pad + pn * NR, acc[r * np + pn])


@always_inline
def p_v[mr: Int, np: Int](p: F32, ldp: Int, v_panels: F32, t_len: Int, dst: F32, ldo: Int):
    """dst[r, 16 n : 16 n + 16] = p[r] @ the values of panel n, for r < mr and n < np."""
    var acc = stack_allocation[mr * np, V16]()
    accumulate[mr, np](acc, p, ldp, 1, mr, v_panels, t_len * NR, t_len)
    comptime for r in range(mr):
        comptime for n in range(np):
            dst.store(r * ldo + n * NR, acc[r * np + n])


def pack_bf16(x: F32, h: Int, t_len: Int, t_pad: Int, d: Int, dh: Int, k_panels: B16, v_panels: B16):
    """`pack` in bfloat16 for `vdpbf16ps` and the AMX tiles: key t's dims 2g, 2g + 1 at k_panels
    [t / 16, g, t % 16, :], value t's dim e at v_panels [e / 16, t / 2, e % 16, t % 2], zero past T up
    to T_pad (a multiple of 16)."""
    var pairs = stack_allocation[MAX_DH, BFloat16]()  # one key in bfloat16, its dims pairwise as 32-bit words
    var words = pairs.bitcast[Int32]()
    for t in range(t_pad):
        var key = x + t * 3 * d + d + h * dh
        for e in range(0, dh, NR):
            pairs.store(e, key.load[width=NR](e).cast[DType.bfloat16]() if t < t_len else SIMD[DType.bfloat16, NR](0))
        var panel = k_panels.bitcast[Int32]() + (t // NR) * dh * NR // 2 + t % NR
        for g in range(dh // 2):
            panel[g * NR] = words[g]
    for t in range(0, t_pad, 2):  # keys t and t + 1 interleaved, 16 dims at a time
        var first = x + t * 3 * d + 2 * d + h * dh
        var second = first + 3 * d
        for e in range(0, dh, NR):
            var a = first.load[width=NR](e).cast[DType.bfloat16]() if t < t_len else SIMD[DType.bfloat16, NR](0)
            var b = second.load[width=NR](e).cast[DType.bfloat16]() if t + 1 < t_len else SIMD[DType.bfloat16, NR](0)
            (v_panels + (e // NR) * t_pad * NR + t * NR).store(0, a.interleave(b))


def rows_bf16[mr: Int, np: Int, tiles_amx: Bool](
    q: F32, ldq: Int, n_rows: Int, k_panels: B16, v_panels: B16, dst: F32, ldo: Int, dh: Int, t_len: Int, t_pad: Int,
    n_panels: Int, scale: Float32, scratch: F32, halves: B16,
):
    """`rows` over `pack_bf16`'s panels: q scaled then rounded to bfloat16 [ROWS, Dh], its scores
    in float32, exp(score - max) rounded to bfloat16 [ROWS, T_pad] (zero past T), the row's sum
    from the float32 ones. tiles_amx: both products on AMX tiles of 16 rows (`scores_amx`, `p_v_amx`)."""
    comptime ROWS = 4 * mr
    var p = scratch  # the scores [ROWS, T_pad]
    var acc = p + ROWS * t_pad  # p @ v [ROWS, Dh]
    var inv_sum = acc + ROWS * MAX_DH  # 1 / the sum of each row's exps
    var p_b = halves  # the exps in bfloat16 [ROWS, T_pad]
    var q_b = halves + ROWS * t_pad  # q scaled, in bfloat16 [ROWS, Dh]
    var tiles = (n_rows + mr - 1) // mr  # of the 4, those with rows to compute
    var amx_tiles = (n_rows + 15) // 16  # AMX tiles of 16 rows, within the ROWS (rows past n_rows never stored)
    var filled = max(tiles * mr, amx_tiles * 16) if tiles_amx else tiles * mr
    for i in range(filled):
        var row = q + min(i, n_rows - 1) * ldq
        for e in range(0, dh, NR):
            (q_b + i * dh).store(e, (row.load[width=NR](e) * scale).cast[DType.bfloat16]())

    comptime if tiles_amx:
        configure_tiles()
        for t in range(amx_tiles):
            scores_amx(q_b + t * 16 * dh, dh, k_panels, p + t * 16 * t_pad, t_pad, n_panels)
    else:
        var c = 0
        while c < n_panels:  # scores: np panels of 16 keys (the panels left one at a time) against mr rows
            var whole = c + np <= n_panels
            for t in range(tiles):
                if whole:
                    scores_bf16[mr, np](q_b + t * mr * dh, dh, k_panels + c * dh * NR, p + t * mr * t_pad + c * NR,
                                        t_pad)
                else:
                    scores_bf16[mr, 1](q_b + t * mr * dh, dh, k_panels + c * dh * NR, p + t * mr * t_pad + c * NR,
                                       t_pad)
            c += np if whole else 1

    for i in range(tiles * mr):  # exp(score - row max) in bfloat16, and 1 / the row's sum
        inv_sum[i] = 1 / exp_to_bf16(p + i * t_pad, t_len, t_pad, p_b + i * t_pad)

    comptime if tiles_amx:
        for t in range(amx_tiles):
            p_v_amx(p_b + t * 16 * t_pad, t_pad, v_panels, acc + t * 16 * dh, dh)
        release_tiles()
    else:
        for t in range(tiles):  # p @ v, np x 16 head dims at a time over every key pair
            var e0 = 0
            while e0 < dh:
                if e0 + np * NR <= dh:
                    p_v_bf16[mr, np](p_b + t * mr * t_pad, t_pad, v_panels + e0 * t_pad, acc + t * mr * dh + e0, dh)
                    e0 += np * NR
                else:
                    p_v_bf16[mr, 1](p_b + t * mr * t_pad, t_pad, v_panels + e0 * t_pad, acc + t * mr * dh + e0, dh)
                    e0 += NR
    for i in range(n_rows):
        for e in range(0, dh, NR):
            (dst + i * ldo).store(e, acc.load[width=NR](i * dh + e) * inv_sum[i])


@always_inline
def scores_bf16[mr: Int, np: Int](q_b: B16, dh: Int, k_panels: B16, dst: F32, t_pad: Int):
    """dst[r, 16 p : 16 p + 16] = q[r] . keys of panel p, for r < mr and p < np (q_b [mr, Dh])."""
    var acc = stack_allocation[mr * np, V16]()
    accumulate_bf16[mr, np](acc, q_b, dh, mr, k_panels, dh * NR, dh // 2)
    comptime for r in range(mr):
        comptime for pn in range(np):
            dst.store(r * t_pad + pn * NR, acc[r * np + pn])


@always_inline
def p_v_bf16[mr: Int, np: Int](p_b: B16, t_pad: Int, v_panels: B16, dst: F32, ldo: Int):
    """dst[r, 16 n : 16 n + 16] = p[r] @ the values of panel n, for r < mr and n < np."""
    var acc = stack_allocation[mr * np, V16]()
    accumulate_bf16[mr, np](acc, p_b, t_pad, mr, v_panels, t_pad * NR, t_pad // 2)
    comptime for r in range(mr):
        comptime for n in range(np):
            dst.store(r * ldo + n * NR, acc[r * np + n])


def scores_amx(q_b: B16, dh: Int, k_panels: B16, dst: F32, t_pad: Int, n_panels: Int):
    """dst[r, :T_pad] = q[r] . every key, for 16 rows of q_b [16, Dh] (Dh a multiple of 32, up to
    128): q's tiles stay in tiles 4-7 while two panels of 16 keys at a time pass through tiles 1 and 3
    into tiles 0 and 2."""
    var steps = dh // 32
    comptime for s in range(MAX_DH // 32):
        if s < steps:
            tile_load[4 + s](q_b + 32 * s, 2 * dh)
    var c = 0
    while c < n_panels:
        var pair = c + 1 < n_panels
        tile_zero[0]()
        tile_zero[2]()
        comptime for s in range(MAX_DH // 32):
            if s < steps:
                tile_load[1](k_panels + c * dh * NR + s * 16 * 32, 64)
                tile_dot_bf16[0, 4 + s, 1]()
                if pair:
                    tile_load[3](k_panels + (c + 1) * dh * NR + s * 16 * 32, 64)
                    tile_dot_bf16[2, 4 + s, 3]()
        tile_store[0](dst + c * NR, 4 * t_pad)
        if pair:
            tile_store[2](dst + (c + 1) * NR, 4 * t_pad)
        c += 2 if pair else 1


def p_v_amx(p_b: B16, t_pad: Int, v_panels: B16, dst: F32, dh: Int):
    """dst[r, :Dh] = p[r] @ the values, for 16 rows of p_b [16, T_pad] (T_pad a multiple of 32):
    up to 4 panels of 16 head dims at a time in tiles 0-3, 32 keys of p in tile 4, the values'
    tiles through 5 and 6."""
    var n_e = dh // NR
    for e0 in range(0, n_e, 4):
        comptime for j in range(4):
            if e0 + j < n_e:
                tile_zero[j]()
        for k in range(t_pad // 32):
            tile_load[4](p_b + 32 * k, 2 * t_pad)
            comptime for j in range(4):
                if e0 + j < n_e:
                    tile_load[5 + j % 2](v_panels + (e0 + j) * t_pad * NR + k * 16 * 32, 64)
                    tile_dot_bf16[j, 4, 5 + j % 2]()
        comptime for j in range(4):
            if e0 + j < n_e:
                tile_store[j](dst + (e0 + j) * NR, 4 * dh)


def exp_to_bf16(row: F32, n: Int, t_pad: Int, dest: B16) -> Float32:
    """dest[j] = exp(row[j] - max(row)) rounded to bfloat16 for j < n, zero up to t_pad; returns
    the float32 exps' sum. One pass for the exps, 16 lanes at a time."""
    var full = n - n % NR
    var m = row_max[NR](row, n)
    var tv = V16(0)
    for j in range(0, full, NR):
        var e = exp(row.load[width=NR](j) - m)
        dest.store(j, e.cast[DType.bfloat16]())
        tv += e
    var total = tv.reduce_add()
    for j in range(full, n):
        var e = exp(row[j] - m)
        dest[j] = e.cast[DType.bfloat16]()
        total += e
    for j in range(n, t_pad):
        dest[j] = BFloat16(0)
    return total


def pack_int16(x: F32, h: Int, t_len: Int, t_pad: Int, d: Int, dh: Int, k_panels: S16, v_panels: S16,
               k_scales: F32, v_scales: F32):
    """`pack_bf16`'s layouts in int16: key t quantized to +-2047 over its Dh dims (k_scales[t]), value
    dim e to +-32767 over the T keys (v_scales[e]); zero keys and values past T up to T_pad."""
    var words = stack_allocation[MAX_DH // 2, Int32]()  # one key's int16 dims pairwise
    var pairs = words.bitcast[Int16]().unsafe_origin_cast[MutAnyOrigin]()
    for t in range(t_pad):
        if t < t_len:
            k_scales[t] = quantize_12_bits(x + t * 3 * d + d + h * dh, dh, pairs)
        else:
            k_scales[t] = 1
            for e in range(0, dh, NR):
                pairs.store(e, SIMD[DType.int16, NR](0))
        var panel = k_panels.bitcast[Int32]() + (t // NR) * dh * NR // 2 + t % NR
        for g in range(dh // 2):
            panel[g * NR] = words[g]
    var inv = stack_allocation[MAX_DH, Float32]()
    for e in range(0, dh, NR):
        var top = V16(0)
        for t in range(t_len):
            top = max(top, abs((x + t * 3 * d + 2 * d + h * dh).load[width=NR](e)))
        var s = top / PV_TOP
        s = s.eq(0).select(V16(1), s)
        v_scales.store(e, s)
        inv.store(e, 1 / s)
    for t in range(0, t_pad, 2):  # keys t and t + 1 interleaved, 16 dims at a time
        var first = x + t * 3 * d + 2 * d + h * dh
        var second = first + 3 * d
        for e in range(0, dh, NR):
            var iv = inv.load[width=NR](e)
            var a = round(first.load[width=NR](e) * iv) if t < t_len else V16(0)
            var b = round(second.load[width=NR](e) * iv) if t + 1 < t_len else V16(0)
            (v_panels + (e // NR) * t_pad * NR + t * NR).store(0, a.cast[DType.int16]().interleave(b.cast[DType.int16]()))


def quantize_12_bits(x: F32, dh: Int, dst: S16) -> Float32:
    """dst[:dh] = x[:dh] rounded to +-2047 of its largest |x| (a query row or a key); returns the
    scale, x ~ dst x scale."""
    var top = V16(0)
    for e in range(0, dh, NR):
        top = max(top, abs(x.load[width=NR](e)))
    var mx = top.reduce_max()
    var s = mx / QK_TOP if mx > 0 else Float32(1)
    for e in range(0, dh, NR):
        dst.store(e, round(x.load[width=NR](e) * (1 / s)).cast[DType.int16]())
    return s


def rows_int16[mr: Int, np: Int](
    q: F32, ldq: Int, n_rows: Int, k_panels: S16, v_panels: S16, k_scales: F32, v_scales: F32, dst: F32, ldo: Int,
    dh: Int, t_len: Int, t_pad: Int, n_panels: Int, scale: Float32, scratch: F32, halves: S16,
):
    """`rows` over `pack_int16`'s panels: each q row quantized to +-2047 (q_scale), a score
    sum x q_scale x k_scale; exp(score - max) quantized to +-32767 of the row's sum; p @ v the sum x
    v_scale / the quantized weights' sum."""
    comptime ROWS = 4 * mr
    var p = scratch  # the scores, then their exps [ROWS, T_pad]
    var acc = p + ROWS * t_pad  # p @ v [ROWS, Dh]
    var q_scale = acc + ROWS * MAX_DH  # then 1 / the sum of each row's quantized weights
    var p_q = halves  # the weights in int16 [ROWS, T_pad] (zero past T)
    var q_q = halves + ROWS * t_pad  # q quantized [ROWS, Dh]
    var tiles = (n_rows + mr - 1) // mr  # of the 4, those with rows to compute
    for i in range(tiles * mr):
        q_scale[i] = quantize_12_bits(q + min(i, n_rows - 1) * ldq, dh, q_q + i * dh) * scale

    var c = 0
    while c < n_panels:  # scores: np panels of 16 keys (the panels left one at a time) against mr rows
        var whole = c + np <= n_panels
        for t in range(tiles):
            var at = p + t * mr * t_pad + c * NR
            if whole:
                madd_rows[mr, np](q_q + t * mr * dh, dh, k_panels + c * dh * NR, dh * NR, dh // 2, q_scale + t * mr,
                                  k_scales + c * NR, at, t_pad)
            else:
                madd_rows[mr, 1](q_q + t * mr * dh, dh, k_panels + c * dh * NR, dh * NR, dh // 2, q_scale + t * mr,
                                 k_scales + c * NR, at, t_pad)
        c += np if whole else 1

    for i in range(tiles * mr):  # the weights in int16, and 1 / their sum
        var row = p + i * t_pad
        var norm = PV_TOP / exp_sum[fast=True](row, t_len)
        var total = SIMD[DType.int32, NR](0)
        var full = t_len - t_len % NR
        for j in range(0, full, NR):
            var w = round(row.load[width=NR](j) * norm).cast[DType.int32]()
            (p_q + i * t_pad).store(j, w.cast[DType.int16]())
            total += w
        var sum = total.reduce_add()
        for j in range(full, t_pad):
            var w = Int32(round(row[j] * norm)) if j < t_len else Int32(0)
            p_q[i * t_pad + j] = Int16(w)
            sum += w
        q_scale[i] = 1 / Float32(sum)

    for t in range(tiles):  # p @ v, np x 16 head dims at a time over every key pair
        var e0 = 0
        while e0 < dh:
            var at = acc + t * mr * dh + e0
            if e0 + np * NR <= dh:
                madd_rows[mr, np](p_q + t * mr * t_pad, t_pad, v_panels + e0 * t_pad, t_pad * NR, t_pad // 2,
                                  q_scale + t * mr, v_scales + e0, at, dh)
                e0 += np * NR
            else:
                madd_rows[mr, 1](p_q + t * mr * t_pad, t_pad, v_panels + e0 * t_pad, t_pad * NR, t_pad // 2,
                                 q_scale + t * mr, v_scales + e0, at, dh)
                e0 += NR
    for i in range(n_rows):
        for e in range(0, dh, NR):
            (dst + i * ldo).store(e, acc.load[width=NR](i * dh + e))


@always_inline
def madd_rows[mr: Int, np: Int](a: S16, lda: Int, panels: S16, ld_panel: Int, pairs: Int, row_scale: F32,
                                col_scale: F32, dst: F32, ldd: Int):
    """dst[r, 16 n + j] = (the int32 sum over k < pairs of a[r, 2k] b[n, k, j, 0] + a[r, 2k + 1]
    b[n, k, j, 1]) x row_scale[r] x col_scale[16 n + j], for r < mr and n < np: `vpmaddwd` over np
    panels b [pairs, 16, 2], ld_panel int16 apart."""
    comptime V = NR // LANES  # vectors of int32 sums per panel
    var acc = stack_allocation[mr * np * V, I32V]()
    comptime for i in range(mr * np * V):
        acc[i] = I32V(0)
    for k in range(pairs):
        comptime for r in range(mr):
            var two = SIMD[DType.int32, LANES]((a + r * lda + 2 * k).bitcast[Int32]()[0])
            comptime for n in range(np):
                comptime for h in range(V):
                    var b = (panels + n * ld_panel + k * 2 * NR + h * 2 * LANES).load[width=2 * LANES]()
                    acc[(r * np + n) * V + h] = madd(acc[(r * np + n) * V + h], bitcast[DType.int16, 2 * LANES](two), b)
    comptime for r in range(mr):
        comptime for n in range(np):
            var sums = SIMD[DType.int32, NR](0)
            comptime for h in range(V):
                sums = sums.insert[offset = h * LANES](acc[(r * np + n) * V + h])
            var v = sums.cast[DType.float32]() * (col_scale.load[width=NR](n * NR) * row_scale[r])
            dst.store(r * ldd + n * NR, v)
