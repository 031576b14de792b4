# The output projection of the int8 decoder (--precision int8) in two passes over the vocabulary.
# Its int8 rows (51864 x 384 = 20 MB for tiny.en) are the largest read of a one-token step, and
# with the layers' weights and the cross K/V a step read more than the L3 holds. The first pass
# reads a 4-bit copy of the rows instead (a float32 scale per 64 weights: 11 MB), the activation
# row quantized to int8, and sums with the machine's byte dot product (`dot4`: `vpdpbusd` with
# VNNI, `vpmaddubsw` without, exact for 4-bit weights). The second recomputes from the int8 rows
# every logit the first put within MARGIN of the row's largest first-pass logit (before any
# suppression), in `few_row_linear_int8`'s arithmetic: those logits are its numbers bit for bit, so
# the row's int8 argmax is exact whenever it lies within MARGIN of that largest; the others keep
# the first pass's 4-bit values. `vocab_draft_int4` does the same over the rows of the clusters
# nearest each row, for the float32 plan's drafted runs (docs/design.md#drafted-runs).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc, stack_allocation
from std.memory.unsafe import bitcast
from std.utils.numerics import neg_inf

from .linear import F32, LANES, NR, V16, dot_rows_int8, finish
from .linear_int8 import B64, I8, I16, I32, dot4
from .threads import share_phases

comptime G4 = 64  # weights per scale of the 4-bit copy (along d_in)
comptime MARGIN = Float32(6)  # logits; on the lecture's steps the int8 argmax lay at most 1.9 below the
# 4-bit pass's largest (docs/design.md, "int8 on the CPU")
# panels summed together, a low- and a high-nibble accumulator each: 8 independent `vpdpbusd` chains
# on AVX-512 hide its latency; with 16 ymm registers (2 per accumulator) more than one panel spills
comptime NP4 = 4 if LANES >= 16 else 1
comptime PANELS_PER_ITEM = 32  # a work item: 512 vocabulary rows
comptime V16P = UnsafePointer[V16, MutUntrackedOrigin]


@extensibility.register("vocab_projection_int4")
struct VocabProjectionInt4:
    """y = x @ w^T per `few_row_linear_int8` (int8 w [N, K], scales float32 [N]) for every
    y[m, j] >= max_j(coarse[m]) - MARGIN, and coarse[m, j] elsewhere, where coarse is x quantized
    per row to int8 (symmetric) times the 4-bit copy: nibbles uint8 [P, K / 8, 64], P = ceil(N / 16)
    panels of 16 rows, byte 4c + i of block t holding row 16p + c's weights at k = 8t + i (low
    nibble) and 8t + 4 + i (high), each stored + 8; group_scales float32 [P, K / 64, 16].
    x float32 [M, K], K a multiple of 64 -> y float32 [M, N]. CPU only."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        nibbles: InputTensor[dtype=DType.uint8, rank=3, ...],
        group_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        w: InputTensor[dtype=DType.int8, rank=2, ...],
        scales: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("vocab_projection_int4 runs on the CPU only")
        var m = x.dim_size(0)
        var kd = x.dim_size(1)
        var n = w.dim_size(0)
        var n_panels = nibbles.dim_size(0)
        var groups = kd // G4
        if kd % G4 != 0 or kd > 5120 or w.dim_size(1) != kd or scales.dim_size(0) != n:
            raise Error("vocab_projection_int4: K not a multiple of 64 up to 5120, or w [N, K] and scales [N] do not match x")
        if n_panels != (n + NR - 1) // NR or nibbles.dim_size(1) * 8 != kd or nibbles.dim_size(2) != 64:
            raise Error("vocab_projection_int4: nibbles are not [ceil(N / 16), K / 8, 64]")
        if group_scales.dim_size(0) != n_panels or group_scales.dim_size(1) != groups or group_scales.dim_size(2) != NR:
            raise Error("vocab_projection_int4: group_scales are not [ceil(N / 16), K / 64, 16]")
        var xp = x.unsafe_ptr()
        var np_ = nibbles.unsafe_ptr()
        var gp = group_scales.unsafe_ptr()
        var wp = w.unsafe_ptr()
        var sp = scales.unsafe_ptr()
        var op = output.unsafe_ptr()
        var n_items = (n_panels + PANELS_PER_ITEM - 1) // PANELS_PER_ITEM
        var xq = alloc[Int8](m * kd).unsafe_origin_cast[MutAnyOrigin]()
        var x_scale = alloc[Float32](m).unsafe_origin_cast[MutAnyOrigin]()
        var group_sums = alloc[Int32](m * groups).unsafe_origin_cast[MutAnyOrigin]()
        var item_max = alloc[Float32](n_items * m).unsafe_origin_cast[MutAnyOrigin]()
        var items = stack_allocation[3, Int]()
        items[0] = m
        items[1] = n_items
        items[2] = n_items

        # 1. x's rows quantized; 2. the first pass, each item's largest per row; 3. the second pass
        def phase(p: Int, item: Int) {var xp, var np_, var gp, var wp, var sp, var op, var xq, var x_scale,
                                       var group_sums, var item_max, var m, var kd, var n, var n_panels, var groups,
                                       var n_items}:
            if p == 0:
                quantize_symmetric(xp + item * kd, kd, xq + item * kd, x_scale + item, group_sums + item * groups)
                return
            var p0 = item * PANELS_PER_ITEM
            var p1 = min(p0 + PANELS_PER_ITEM, n_panels)
            if p == 1:
                for r in range(m):
                    item_max[item * m + r] = coarse(xq + r * kd, x_scale[r], group_sums + r * groups, np_, gp, kd,
                                                    groups, p0, p1, n, op + r * n)
                return
            for r in range(m):
                var top = item_max[r]
                for i in range(1, n_items):
                    top = max(top, item_max[i * m + r])
                var row = op + r * n
                for j in range(p0 * NR, min(p1 * NR, n)):
                    if row[j] >= top - MARGIN:
                        dot_rows_int8(xp + r * kd, wp, kd, j, j + 1, row + j)
                        row[j] = finish[DType.int8](row[j], sp, j, Float32(0))

        share_phases(items, 3, phase)
        xq.free()
        x_scale.free()
        group_sums.free()
        item_max.free()


def quantize_symmetric(x: UnsafePointer[Float32, ...], kd: Int, q: I8, scale: F32, group_sums: I32):
    """x[:kd] ~ scale q, q int8 in [-127, 127] (scale = max |x| / 127); group_sums[g] = the sum of
    q over k in [64 g, 64 g + 64)."""
    var hi = V16(0)
    for k in range(0, kd, NR):
        hi = max(hi, abs(x.load[width=NR](k)))
    var mx = hi.reduce_max()
    var s = mx / 127 if mx > 0 else Float32(1)
    var inv = 1 / s
    for g in range(kd // G4):
        var sum = SIMD[DType.int32, NR](0)
        for k in range(g * G4, (g + 1) * G4, NR):
            var v = min(max(round(x.load[width=NR](k) * inv), V16(-127)), V16(127))
            q.store(k, v.cast[DType.int8]())
            sum += v.cast[DType.int32]()
        group_sums[g] = sum.reduce_add()
    scale[0] = s


def coarse(xq: I8, x_scale: Float32, group_sums: I32, nibbles: UnsafePointer[UInt8, ...],
           group_scales: UnsafePointer[Float32, ...], kd: Int, groups: Int, p0: Int, p1: Int, n: Int, dst: F32) -> Float32:
    """dst[j] = the first pass's logit j for the rows j < n of panels p0 <= p < p1; returns their largest."""
    var f = stack_allocation[NP4, V16]()
    var top = V16(-3.0e38)
    var panel_bytes = kd * 8  # K / 8 blocks of 64 bytes
    var p = p0
    while p < p1:
        var here = min(NP4, p1 - p)
        panel_sums[NP4](xq, group_sums, nibbles + p * panel_bytes, group_scales + p * groups * NR, kd, groups,
                        here, f)
        for i in range(here):
            var v = f[i] * x_scale
            var j0 = (p + i) * NR
            if j0 + NR <= n:
                dst.store(j0, v)
                top = max(top, v)
            else:
                for c in range(n - j0):
                    dst[j0 + c] = v[c]
                    top[0] = max(top[0], v[c])
        p += NP4
    return top.reduce_max()


@always_inline
def panel_sums[np: Int](xq: I8, group_sums: I32, nibbles: UnsafePointer[UInt8, ...],
                        group_scales: UnsafePointer[Float32, ...], kd: Int, groups: Int, panels: Int, f: V16P):
    """f[i] = sum over the groups g of group_scales[i, g] (sum over k in g of q4[k] xq[k]) for the 16
    rows of panel i < np (panels from `panels` on repeat the last one), q4 = nibble - 8."""
    var lo = stack_allocation[np, I16]()
    var hi = stack_allocation[np, I16]()
    comptime for i in range(np):
        f[i] = V16(0)
    var low4 = B64(0x0F)
    for g in range(groups):
        comptime for i in range(np):
            lo[i] = I16(-8 * group_sums[g])  # every nibble is stored + 8
            hi[i] = I16(0)
        for t in range(G4 // 8):
            var k0 = g * G4 + 8 * t
            var a0 = bitcast[DType.uint8, 4 * NR](SIMD[DType.int32, NR]((xq + k0).bitcast[Int32]()[0]))
            var a1 = bitcast[DType.uint8, 4 * NR](SIMD[DType.int32, NR]((xq + k0 + 4).bitcast[Int32]()[0]))
            comptime for i in range(np):
                var block = nibbles.load[width=4 * NR](min(i, panels - 1) * kd * 8 + k0 * 8)
                lo[i] = dot4(lo[i], block & low4, a0)
                hi[i] = dot4(hi[i], block >> B64(4), a1)
        comptime for i in range(np):
            var s = group_scales.load[width=NR]((min(i, panels - 1) * groups + g) * NR)
            f[i] += (lo[i] + hi[i]).cast[DType.float32]() * s


comptime DRAFT_ITEMS = 8  # work items a row's searched groups are dealt to


@extensibility.register("vocab_draft_int4")
struct VocabDraftInt4:
    """A drafted run's projection: per row m of x, the rows of group 0 and of the `searched` groups
    whose centroids score highest against x[m] get what `vocab_projection_int4` would give them if
    they were the whole vocabulary (the 4-bit pass, then int8 within MARGIN of their largest);
    every other logit is -inf. The groups come from `WeightBank.int4_clusters`: nibbles and
    group_scales as `vocab_projection_int4`'s over the rows in group order, ids int32 [16 P] each
    grouped row's vocabulary row (-1: padding), starts int32 [G + 1] each group's first panel,
    centroids float32 [G, K]. x float32 [M, K] -> y float32 [M, N]. CPU only."""

    @staticmethod
    def execute[target: StaticString, searched: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        nibbles: InputTensor[dtype=DType.uint8, rank=3, ...],
        group_scales: InputTensor[dtype=DType.float32, rank=3, ...],
        ids: InputTensor[dtype=DType.int32, rank=1, ...],
        starts: InputTensor[dtype=DType.int32, rank=1, ...],
        centroids: InputTensor[dtype=DType.float32, rank=2, ...],
        w: InputTensor[dtype=DType.int8, rank=2, ...],
        scales: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("vocab_draft_int4 runs on the CPU only")
        var m = x.dim_size(0)
        var kd = x.dim_size(1)
        var n = w.dim_size(0)
        var n_groups = centroids.dim_size(0)
        var n_panels = nibbles.dim_size(0)
        var groups = kd // G4
        if kd % G4 != 0 or kd > 5120 or w.dim_size(1) != kd or scales.dim_size(0) != n or centroids.dim_size(1) != kd:
            raise Error("vocab_draft_int4: K not a multiple of 64 up to 5120, or w, scales and centroids do not match x")
        if starts.dim_size(0) != n_groups + 1 or ids.dim_size(0) != n_panels * NR or searched >= n_groups:
            raise Error("vocab_draft_int4: starts, ids or searched do not match the groups")
        if nibbles.dim_size(1) * 8 != kd or nibbles.dim_size(2) != 64:
            raise Error("vocab_draft_int4: nibbles are not [P, K / 8, 64]")
        if group_scales.dim_size(0) != n_panels or group_scales.dim_size(1) != groups or group_scales.dim_size(2) != NR:
            raise Error("vocab_draft_int4: group_scales are not [P, K / 64, 16]")
        var stp = starts.unsafe_ptr()
        for g in range(n_groups):
            if stp[g] < 0 or stp[g] > stp[g + 1] or Int(stp[g + 1]) > n_panels:
                raise Error("vocab_draft_int4: starts do not rise within the panels")
        var xp = x.unsafe_ptr()
        var np_ = nibbles.unsafe_ptr()
        var gp = group_scales.unsafe_ptr()
        var idp = ids.unsafe_ptr()
        var cp = centroids.unsafe_ptr()
        var wp = w.unsafe_ptr()
        var sp = scales.unsafe_ptr()
        var op = output.unsafe_ptr()
        comptime chosen_per_row = searched + 1
        var xq = alloc[Int8](m * kd).unsafe_origin_cast[MutAnyOrigin]()
        var x_scale = alloc[Float32](m).unsafe_origin_cast[MutAnyOrigin]()
        var group_sums = alloc[Int32](m * groups).unsafe_origin_cast[MutAnyOrigin]()
        var chosen = alloc[Int](m * chosen_per_row).unsafe_origin_cast[MutAnyOrigin]()
        var item_max = alloc[Float32](m * DRAFT_ITEMS).unsafe_origin_cast[MutAnyOrigin]()
        var coarse_rows = alloc[Float32](m * n_panels * NR).unsafe_origin_cast[MutAnyOrigin]()
        var items = stack_allocation[3, Int]()
        items[0] = m
        items[1] = m * DRAFT_ITEMS
        items[2] = m * DRAFT_ITEMS

        # 1. x's rows quantized, their logits -inf, their groups chosen; 2. the chosen groups' 4-bit
        # pass, each item's largest; 3. the second pass over them
        def phase(p: Int, item: Int) {var xp, var np_, var gp, var idp, var stp, var cp, var wp, var sp, var op,
                                       var xq, var x_scale, var group_sums, var chosen, var item_max,
                                       var coarse_rows, var kd, var n, var n_groups, var n_panels, var groups}:
            if p == 0:
                quantize_symmetric(xp + item * kd, kd, xq + item * kd, x_scale + item, group_sums + item * groups)
                var row = op + item * n
                var j = 0
                while j + NR <= n:
                    row.store(j, V16(neg_inf[DType.float32]()))
                    j += NR
                for i in range(j, n):
                    row[i] = neg_inf[DType.float32]()
                choose[searched](xp + item * kd, cp, kd, n_groups, chosen + item * chosen_per_row)
                return
            var r = item // DRAFT_ITEMS
            var part = item % DRAFT_ITEMS
            var row = op + r * n
            var rc = coarse_rows + r * n_panels * NR
            var mine = chosen + r * chosen_per_row
            if p == 1:
                var top = Float32(-3.0e38)
                for c in range(part, chosen_per_row, DRAFT_ITEMS):
                    var p0 = Int(stp[mine[c]])
                    var p1 = Int(stp[mine[c] + 1])
                    _ = coarse(xq + r * kd, x_scale[r], group_sums + r * groups, np_, gp, kd, groups, p0, p1,
                               n_panels * NR, rc)
                    for i in range(p0 * NR, p1 * NR):
                        var j = Int(idp[i])
                        if j >= 0:
                            row[j] = rc[i]
                            top = max(top, rc[i])
                item_max[item] = top
                return
            var top = item_max[r * DRAFT_ITEMS]
            for i in range(1, DRAFT_ITEMS):
                top = max(top, item_max[r * DRAFT_ITEMS + i])
            for c in range(part, chosen_per_row, DRAFT_ITEMS):
                for i in range(Int(stp[mine[c]]) * NR, Int(stp[mine[c] + 1]) * NR):
                    var j = Int(idp[i])
                    if j >= 0 and row[j] >= top - MARGIN:
                        dot_rows_int8(xp + r * kd, wp, kd, j, j + 1, row + j)
                        row[j] = finish[DType.int8](row[j], sp, j, Float32(0))

        share_phases(items, 3, phase)
        xq.free()
        x_scale.free()
        group_sums.free()
        chosen.free()
        item_max.free()
        coarse_rows.free()


def choose[searched: Int](x: UnsafePointer[Float32, ...], centroids: UnsafePointer[Float32, ...], kd: Int,
                          n_groups: Int, chosen: UnsafePointer[Int, MutAnyOrigin]):
    """chosen[0] = group 0, then the `searched` groups g >= 1 whose centroids c_g score highest
    (x . c_g), best first: distinct groups whatever x holds (a NaN score counts as the lowest)."""
    comptime LOWEST = Float32(-3.0e38)  # an untaken group's least score; a taken one's is -inf
    var padded = (n_groups + NR - 1) // NR * NR
    var score = alloc[Float32](padded)
    for g in range(padded):
        score[g] = neg_inf[DType.float32]()
    for g in range(1, n_groups):
        var acc = V16(0)
        for k in range(0, kd, NR):
            acc = x.load[width=NR](k).fma(centroids.load[width=NR](g * kd + k), acc)
        var v = acc.reduce_add()
        score[g] = v if v > LOWEST else LOWEST
    chosen[0] = 0
    for c in range(1, searched + 1):
        var top = V16(neg_inf[DType.float32]())
        for g in range(0, padded, NR):
            top = max(top, score.load[width=NR](g))
        var best = top.reduce_max()
        var g = 1
        while score[g] != best:  # an untaken group scores best (searched < n_groups)
            g += 1
        chosen[c] = g
        score[g] = neg_inf[DType.float32]()
    score.free()
