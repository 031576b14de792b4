# The encoder's linears in int8 for the CPU (`--precision int8`): weights quantized once at load per
# output column (symmetric int8, a float32 scale per column), activations per row as they arrive
# (asymmetric uint8: a scale and a zero point per row), products summed exactly in int32 by the
# machine's byte dot product: `vpdpbusd` (AVX-512 VNNI on zmm, AVX-VNNI on ymm) multiplies 4 uint8 x
# int8 pairs and adds them to an int32 lane in one instruction, 4x the multiply-adds of a float32
# FMA. Without VNNI (AVX2, AVX-512 without it) the same int32 sums come from `vpmaddwd` over the
# operands widened to int16 (`madd_tile`), so every machine computes the same numbers. With `amx`
# (a CPU with AMX, its tiles permitted) AMX tiles compute the same int32 sums, 32 rows x 32 columns
# at a time.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc, stack_allocation
from std.memory.unsafe import bitcast
from std.sys import CompilationTarget, llvm_intrinsic, num_logical_cores

from .amx import AMX_INT8, configure_tiles, release_tiles, tile_dot_int8, tile_load, tile_store, tile_zero
from .linear import LANES, NR, V16, gelu_erf, store
from .threads import share_items

comptime I16 = SIMD[DType.int32, NR]  # one int32 accumulator per column of a panel
comptime B64 = SIMD[DType.uint8, 4 * NR]  # 4 consecutive k of a panel's 16 columns
comptime VNNI_ZMM = CompilationTarget.has_vnni() and LANES >= 16
comptime VNNI_YMM = CompilationTarget.has_vnni() or CompilationTarget._has_feature["avxvnni"]()
comptime BYTE_DOT = VNNI_ZMM if LANES >= 16 else VNNI_YMM  # `vpdpbusd` at the machine's width
# The register tile, rows x panels of 16 int32 columns: with VNNI as the float32 kernels' (24 zmm of
# 32, or 12 ymm of 16); without, `madd_tile`'s rows x MADD_COLS columns (20 ymm or 24 zmm of sums,
# with the weights, a row and a product beside them).
comptime MR = (12 if LANES >= 16 else 6) if BYTE_DOT else (12 if LANES >= 16 else 5)
comptime TILE_PANELS = 2 if LANES >= 16 and BYTE_DOT else 1
comptime MADD_COLS = LANES  # columns per pass of `madd_tile`: two vectors of LANES / 2 columns' pairs
comptime W16 = SIMD[DType.int16, 2 * LANES]  # LANES / 2 columns' 4 k, or one row's 4 k repeated
comptime I32V = SIMD[DType.int32, LANES]
comptime Q16 = UnsafePointer[Int16, MutAnyOrigin]
comptime BLOCK_BYTES = 48 * 1024  # a work item's quantized rows stay in L2 while every panel passes
comptime F32 = UnsafePointer[Float32, MutAnyOrigin]
comptime U8 = UnsafePointer[UInt8, MutAnyOrigin]
comptime I8 = UnsafePointer[Int8, MutAnyOrigin]
comptime I32 = UnsafePointer[Int32, MutAnyOrigin]


@always_inline
def dot4(acc: I16, a: B64, b: B64) -> I16:
    """acc[j] + the sum over i < 4 of a[4j + i] (uint8) x b[4j + i] (the bits of an int8): `vpdpbusd`,
    exact. Without VNNI `vpmaddubsw` + `vpmaddwd`, exact only where a's bytes are below 16 (the 4-bit
    vocabulary pass): `vpmaddubsw` adds two products into an int16 and saturates."""
    comptime if VNNI_ZMM:
        return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.512", I16](acc, a, b)
    elif LANES >= 16:
        return small_dot4[NR](acc, a, b)
    else:
        comptime half = NR // 2
        var lo = half_dot4(acc.slice[half, offset=0](), a.slice[4 * half, offset=0](), b.slice[4 * half, offset=0]())
        var hi = half_dot4(acc.slice[half, offset=half](), a.slice[4 * half, offset=4 * half](),
                           b.slice[4 * half, offset=4 * half]())
        return lo.join(hi)


@always_inline
def half_dot4(acc: SIMD[DType.int32, NR // 2], a: SIMD[DType.uint8, 2 * NR],
              b: SIMD[DType.uint8, 2 * NR]) -> SIMD[DType.int32, NR // 2]:
    comptime if VNNI_YMM:
        return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.256", SIMD[DType.int32, NR // 2]](acc, a, b)
    else:
        return small_dot4[NR // 2](acc, a, b)


@always_inline
def small_dot4[w: Int](acc: SIMD[DType.int32, w], a: SIMD[DType.uint8, 4 * w],
                       b: SIMD[DType.uint8, 4 * w]) -> SIMD[DType.int32, w]:
    """`dot4` without VNNI, for a's bytes below 16: `vpmaddubsw` adds pairs of products into int16s,
    `vpmaddwd` against ones adds those pairs into the int32 lanes."""
    comptime ubsw = "llvm.x86.avx512.pmaddubs.w.512" if w == 16 else "llvm.x86.avx2.pmadd.ub.sw"
    comptime wd = "llvm.x86.avx512.pmaddw.d.512" if w == 16 else "llvm.x86.avx2.pmadd.wd"
    var pairs = llvm_intrinsic[ubsw, SIMD[DType.int16, 2 * w]](a, b)
    return acc + llvm_intrinsic[wd, SIMD[DType.int32, w]](pairs, SIMD[DType.int16, 2 * w](1))


@extensibility.register("packed_linear_int8")
struct PackedLinearInt8:
    """y = residual + act(dequantized(x_q @ w_q) + bias), with x float32 [M, K] quantized per row
    here: x ~ s_x (q_x - z_x), q_x uint8; w ~ w_q s_w, w_q int8 per column. panels int8
    [N / 16, K / 4, 16, 4] (column j's k = 4g .. 4g + 3 at [j / 16, g, j % 16, :]); scales float32
    [N]; col_sums int32 [N] (sum over k of w_q[k, j]); bias float32 [N]; residual float32 [M, N] or
    [0, 0]; GELU when `gelu` -> y float32 [M, N]:
        y[i, j] = s_x[i] s_w[j] (sum_k q_x[i, k] w_q[k, j] - z_x[i] col_sums[j]) + bias[j].
    The int32 sums are exact, so the tile (`tile_rows`, `tile_panels`) and `emulate` (the
    instructions of a machine without VNNI) change no bit of the result, nor do AMX tiles (`amx`,
    where K is a multiple of 64). K a multiple of 4. CPU only."""

    @staticmethod
    def execute[target: StaticString, gelu: Bool, tile_rows: Int, tile_panels: Int, emulate: Bool, amx: Bool](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        panels: InputTensor[dtype=DType.int8, rank=4, ...],
        scales: InputTensor[dtype=DType.float32, rank=1, ...],
        col_sums: InputTensor[dtype=DType.int32, rank=1, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        residual: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("packed_linear_int8 runs on the CPU only")
        comptime mr = tile_rows if tile_rows else MR
        comptime np = tile_panels if tile_panels else TILE_PANELS
        var m = x.dim_size(0)
        var kd = x.dim_size(1)
        var n_panels = panels.dim_size(0)
        var n = n_panels * NR
        if kd % 4 != 0 or panels.dim_size(1) * 4 != kd or panels.dim_size(2) != NR or panels.dim_size(3) != 4:
            raise Error("packed_linear_int8: panels are not [N / 16, K / 4, 16, 4] for x [M, K], K a multiple of 4")
        if scales.dim_size(0) != n or col_sums.dim_size(0) != n or bias.dim_size(0) != n:
            raise Error("packed_linear_int8: scales, col_sums or bias are not [N]")
        var xp = x.unsafe_ptr()
        var wp = panels.unsafe_ptr()
        var sp = scales.unsafe_ptr()
        var cp = col_sums.unsafe_ptr()
        var bp = bias.unsafe_ptr()
        var rp = residual.unsafe_ptr()
        var has_residual = residual.dim_size(0) == m and residual.dim_size(1) == n
        var op = output.unsafe_ptr()
        comptime TILES = amx and AMX_INT8 and not emulate
        var on_tiles = TILES and kd % 64 == 0
        comptime MADD = emulate or not BYTE_DOT
        var unit = AMX_ROWS if on_tiles else mr  # the tiles' row blocks read whole blocks of q
        var block = balanced_block(m, max(unit, BLOCK_BYTES // kd // unit * unit), unit)

        def rows(item: Int) {var xp, var wp, var sp, var cp, var bp, var rp, var has_residual, var op, var m, var kd,
                             var n, var n_panels, var block, var on_tiles}:
            var r0 = item * block
            var count = min(block, m - r0)
            var q = alloc[UInt8](block * kd).unsafe_origin_cast[MutAnyOrigin]()
            var row_scale = alloc[Float32](block).unsafe_origin_cast[MutAnyOrigin]()
            var zero = alloc[Int32](block).unsafe_origin_cast[MutAnyOrigin]()
            for r in range(count):
                quantize_row(xp + (r0 + r) * kd, kd, q + r * kd, row_scale + r, zero + r)
            comptime if TILES:
                if on_tiles:
                    configure_tiles()
                    tiles[gelu](q, count, kd, wp, n_panels, row_scale, zero, sp, cp, bp, has_residual, rp + r0 * n,
                                op + r0 * n, n)
                    release_tiles()
                    q.free()
                    row_scale.free()
                    zero.free()
                    return
            comptime if MADD:
                var q16 = alloc[Int16](count * kd).unsafe_origin_cast[MutAnyOrigin]()
                widen_rows(q, q16, count * kd)
                for j in range(n_panels):
                    for i in range(0, count, mr):
                        var at = (r0 + i) * n + j * NR
                        madd_tile[gelu, mr](q16 + i * kd, min(mr, count - i), kd, wp + j * kd * NR, row_scale + i,
                                            zero + i, sp + j * NR, cp + j * NR, bp + j * NR, has_residual, rp + at,
                                            op + at, n)
                q16.free()
            else:
                var j = 0
                while j < n_panels:
                    var whole = j + np <= n_panels  # else the panels left go one at a time
                    var i = 0
                    while i < count:
                        var at = (r0 + i) * n + j * NR
                        var rows_here = min(mr, count - i)
                        if whole:
                            tile[gelu, mr, np](q + i * kd, rows_here, kd, wp + j * kd * NR, row_scale + i, zero + i,
                                               sp + j * NR, cp + j * NR, bp + j * NR, has_residual, rp + at, op + at, n)
                        else:
                            tile[gelu, mr, 1](q + i * kd, rows_here, kd, wp + j * kd * NR, row_scale + i, zero + i,
                                              sp + j * NR, cp + j * NR, bp + j * NR, has_residual, rp + at, op + at, n)
                        i += mr
                    j += np if whole else 1
            q.free()
            row_scale.free()
            zero.free()

        share_items((m + block - 1) // block, rows)


def balanced_block(m: Int, most: Int, mr: Int) -> Int:
    """Rows per work item: at most `most` (a multiple of mr), as many items as the threads share
    evenly where that fits, so that no thread runs a last item alone (13 items of 2 threads' 14)."""
    var threads = num_logical_cores()
    var items = (m + most - 1) // most
    items = (items + threads - 1) // threads * threads
    return max(mr, ((m + items - 1) // items + mr - 1) // mr * mr)


def quantize_row(x: F32, kd: Int, q: U8, scale: F32, zero: I32):
    """x[:kd] ~ scale (q - zero) with q uint8: the row's range, 0 included, in 255 steps."""
    comptime W = 16
    var lo = SIMD[DType.float32, W](0)
    var hi = SIMD[DType.float32, W](0)
    var k = 0
    while k + W <= kd:
        var v = x.load[width=W](k)
        lo = min(lo, v)
        hi = max(hi, v)
        k += W
    var mn = lo.reduce_min()
    var mx = hi.reduce_max()
    for t in range(k, kd):
        mn = min(mn, x[t])
        mx = max(mx, x[t])
    var s = (mx - mn) / 255 if mx > mn else Float32(1)
    var inv = 1 / s
    var z = min(max(round(-mn * inv), Float32(0)), Float32(255))
    scale[0] = s
    zero[0] = Int32(z)
    k = 0
    while k + W <= kd:
        var v = min(max(round(x.load[width=W](k) * inv) + z, SIMD[DType.float32, W](0)), SIMD[DType.float32, W](255))
        q.store(k, v.cast[DType.uint8]())
        k += W
    for t in range(k, kd):
        q[t] = UInt8(min(max(round(x[t] * inv) + z, Float32(0)), Float32(255)))


comptime I16P = UnsafePointer[I16, MutUntrackedOrigin]  # `stack_allocation`s
comptime AMX_ROWS = 32  # rows of q per pass of the AMX tiles: two tiles of 16


def tiles[gelu: Bool](q: U8, count: Int, kd: Int, panels: I8, n_panels: Int, row_scale: F32, zero: I32, scale: F32,
                      col_sums: I32, bias: F32, add: Bool, residual: F32, y: F32, ldy: Int):
    """y for `count` quantized rows of q [block, K] (block a multiple of 32, K of 64) on AMX tiles:
    per pair of panels (32 columns, tiles 6 and 7), every 32 rows (tiles 4 and 5) into tiles 0-3,
    K 64 at a time; the sums then finish as `tile`'s."""
    var sums = stack_allocation[AMX_ROWS * 2, I16]()  # [32 rows, 2 panels] of 16 int32
    var c = sums.bitcast[Int32]()
    var j = 0
    while j < n_panels:
        var pair = j + 1 < n_panels
        var b = panels + j * kd * NR
        var i = 0
        while i < count:
            var a = q + i * kd
            comptime for t in range(4):
                tile_zero[t]()
            for s in range(kd // 64):
                tile_load[4](a + 64 * s, kd)
                tile_load[5](a + 16 * kd + 64 * s, kd)
                tile_load[6](b + 1024 * s, 64)
                tile_dot_int8[0, 4, 6]()
                tile_dot_int8[2, 5, 6]()
                if pair:
                    tile_load[7](b + kd * NR + 1024 * s, 64)
                    tile_dot_int8[1, 4, 7]()
                    tile_dot_int8[3, 5, 7]()
            var at = i * ldy + j * NR
            var rows = min(AMX_ROWS, count - i)
            if pair:  # rows 32 int32 apart, as `finish` reads 2 panels
                tile_store[0](c, 128)
                tile_store[1](c + 16, 128)
                tile_store[2](c + 16 * 32, 128)
                tile_store[3](c + 16 * 32 + 16, 128)
                finish[gelu, 2](sums, rows, row_scale + i, zero + i, scale + j * NR, col_sums + j * NR, bias + j * NR,
                                add, residual + at, y + at, ldy)
            else:
                tile_store[0](c, 64)
                tile_store[2](c + 16 * 16, 64)
                finish[gelu, 1](sums, rows, row_scale + i, zero + i, scale + j * NR, col_sums + j * NR, bias + j * NR,
                                add, residual + at, y + at, ldy)
            i += AMX_ROWS
        j += 2 if pair else 1


@always_inline
def accumulate[mr: Int, np: Int](acc: I16P, q: U8, ldq: Int, rows: Int, w: I8, w_panel: Int, groups: Int):
    """acc[r * np + p] = for r < mr and p < np, the int32 sums over k < 4 groups of
    q[r * ldq + k] x w[p * w_panel + (k / 4) * 64 + j * 4 + k % 4] for the 16 columns j. Rows from
    `rows` on repeat the last one."""
    var wv = stack_allocation[np, B64]()
    comptime for i in range(mr * np):
        acc[i] = I16(0)
    for g in range(groups):
        comptime for p in range(np):
            wv[p] = (w + p * w_panel + g * 4 * NR).bitcast[UInt8]().load[width=4 * NR](0)
        comptime for r in range(mr):
            var four = (q + min(r, rows - 1) * ldq + 4 * g).bitcast[Int32]()[0]
            var a = bitcast[DType.uint8, 4 * NR](SIMD[DType.int32, NR](four))
            comptime for p in range(np):
                acc[r * np + p] = dot4(acc[r * np + p], a, wv[p])


@always_inline
def tile[gelu: Bool, mr: Int, np: Int](q: U8, rows: Int, kd: Int, panel: I8, row_scale: F32, zero: I32, scale: F32,
                                       col_sums: I32, bias: F32, add: Bool, residual: F32, y: F32, ldy: Int):
    """y[r, 0:16 np] for r < rows <= mr: the np panels [K / 4, 16, 4] one after another, with VNNI."""
    comptime assert BYTE_DOT, "without VNNI the tile is `madd_tile`"
    var acc = stack_allocation[mr * np, I16]()
    accumulate[mr, np](acc, q, kd, rows, panel, kd * NR, kd // 4)
    comptime for r in range(mr):
        if r < rows:
            finish_row[gelu, np](acc + r * np, row_scale[r], zero[r], scale, col_sums, bias, add,
                                 residual + r * ldy, y + r * ldy)


def widen_rows(q: U8, q16: Q16, count: Int):
    """q16[:count] = q[:count] widened to int16 (`madd_tile`'s rows)."""
    var k = 0
    while k + 32 <= count:
        q16.store(k, q.load[width=32](k).cast[DType.int16]())
        k += 32
    for t in range(k, count):
        q16[t] = Int16(q[t])


@always_inline
def madd(acc: I32V, a: W16, b: W16) -> I32V:
    """acc + `vpmaddwd`: lane i adds a[2i] b[2i] + a[2i + 1] b[2i + 1], exact for uint8 x int8."""
    comptime name = "llvm.x86.avx512.pmaddw.d.512" if LANES >= 16 else "llvm.x86.avx2.pmadd.wd"
    return acc + llvm_intrinsic[name, I32V](a, b)


@always_inline
def madd_tile[gelu: Bool, mr: Int](q16: Q16, rows: Int, kd: Int, panel: I8, row_scale: F32, zero: I32, scale: F32,
                                   col_sums: I32, bias: F32, add: Bool, residual: F32, y: F32, ldy: Int):
    """`tile`'s y[r, 0:16] for r < rows <= mr, one panel, without a byte dot product: per MADD_COLS
    columns, each row's 4 k widened to int16 and repeated (a) against a vector of LANES / 2 columns'
    4 k sign-extended to int16 (b); `vpmaddwd` adds the products of k 0-1 and of k 2-3 into two int32
    lanes of a column, which are added at the end. The same int32 sums as `vpdpbusd`'s."""
    var sums = stack_allocation[mr, I16]()
    var acc = stack_allocation[mr * 2, I32V]()
    for h in range(NR // MADD_COLS):  # a runtime loop: one half's sums are stored before the next starts
        comptime for i in range(mr * 2):
            acc[i] = I32V(0)
        var w = panel + h * MADD_COLS * 4
        for g in range(kd // 4):
            var b0 = w.load[width=2 * LANES](g * 4 * NR).cast[DType.int16]()
            var b1 = w.load[width=2 * LANES](g * 4 * NR + 2 * LANES).cast[DType.int16]()
            comptime for r in range(mr):
                var four = (q16 + min(r, rows - 1) * kd + 4 * g).bitcast[Int64]()[0]
                var a = bitcast[DType.int16, 2 * LANES](SIMD[DType.int64, LANES // 2](four))
                acc[2 * r] = madd(acc[2 * r], a, b0)
                acc[2 * r + 1] = madd(acc[2 * r + 1], a, b1)
        comptime for r in range(mr):
            var pairs = acc[2 * r].join(acc[2 * r + 1]).deinterleave()
            (sums + r).bitcast[Int32]().store(h * MADD_COLS, pairs[0] + pairs[1])
    comptime for r in range(mr):
        if r < rows:
            finish_row[gelu, 1](sums + r, row_scale[r], zero[r], scale, col_sums, bias, add, residual + r * ldy,
                                y + r * ldy)


def finish[gelu: Bool, np: Int](acc: I16P, rows: Int, row_scale: F32, zero: I32, scale: F32, col_sums: I32, bias: F32,
                                add: Bool, residual: F32, y: F32, ldy: Int):
    """`finish_row` for rows r < rows of acc [rows, np] (16 int32 each)."""
    for r in range(rows):
        finish_row[gelu, np](acc + r * np, row_scale[r], zero[r], scale, col_sums, bias, add, residual + r * ldy,
                             y + r * ldy)


@always_inline
def finish_row[gelu: Bool, np: Int](acc: I16P, row_scale: Float32, zero: Int32, scale: F32, col_sums: I32, bias: F32,
                                    add: Bool, residual: F32, y: F32):
    """y[0:16 np] of one row from its int32 sums acc[0:np]: dequantized, the bias, GELU, the residual."""
    comptime for p in range(np):
        var exact = acc[p] - zero * col_sums.load[width=NR](p * NR)
        var v = exact.cast[DType.float32]() * (scale.load[width=NR](p * NR) * row_scale)
        v += bias.load[width=NR](p * NR)
        comptime if gelu:
            v = gelu_erf[NR](v)
        store[False](v, add, residual + p * NR, y + p * NR)
