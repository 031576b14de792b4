# The encoder's and the prompts' linears in bfloat16 for the CPU (`--precision bf16`), where the CPU
# has AVX512_BF16: weights rounded to bfloat16 once at load, activations rounded to bfloat16 per row
# as they arrive, products summed in float32 by `vdpbf16ps`, which multiplies 2 bfloat16 pairs per
# float32 lane and adds both to it in one instruction: 2x the multiply-adds of a float32 FMA on the
# same register width. A bfloat16 product is exact in float32, so only the inputs' rounding (8
# significant bits) and the float32 sums' differ from the float32 product.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc, stack_allocation
from std.memory.unsafe import bitcast
from std.sys import CompilationTarget, llvm_intrinsic

from .linear import NR, V16, store
from .threads import share_items

comptime BF16 = CompilationTarget._has_feature["avx512bf16"]()  # vdpbf16ps on zmm
comptime P32 = SIMD[DType.bfloat16, 2 * NR]  # 2 consecutive k of a panel's 16 columns
# The register tile, rows x panels of 16 float32 columns, as the float32 kernel's on AVX-512: 24 zmm
# accumulators of 32, beside 2 weight vectors and a broadcast pair of x.
comptime MR = 12
comptime TILE_PANELS = 2
comptime BLOCK_BYTES = 48 * 1024  # a work item's bfloat16 rows stay in L2 while every panel passes
comptime F32 = UnsafePointer[Float32, MutAnyOrigin]
comptime B16 = UnsafePointer[BFloat16, MutAnyOrigin]
comptime U16 = UnsafePointer[UInt16, MutAnyOrigin]


@extensibility.register("packed_linear_bf16")
struct PackedLinearBF16:
    """y = residual + act(bf16(x) @ w_bf16 + bias): x float32 [M, K], rounded to bfloat16 (to nearest,
    ties to even) here; panels the bits of bfloat16 weights as uint16 [N / 16, K / 2, 16, 2] (column
    j's k = 2g, 2g + 1 at [j / 16, g, j % 16, :]); bias float32 [N]; residual float32 [M, N] or
    [0, 0]; GELU when `gelu` -> y float32 [M, N]. Sums in float32, each a fixed order over k, so the
    tile (`tile_rows`, `tile_panels`) changes no bit of the result. K even. CPU with AVX512_BF16 only
    (elsewhere it raises)."""

    @staticmethod
    def execute[target: StaticString, gelu: Bool, tile_rows: Int, tile_panels: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        panels: InputTensor[dtype=DType.uint16, rank=4, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        residual: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu" or not BF16:
            raise Error("packed_linear_bf16 runs on a CPU with AVX512_BF16 (vdpbf16ps) only")
        else:
            comptime mr = tile_rows if tile_rows else MR
            comptime np = tile_panels if tile_panels else TILE_PANELS
            var m = x.dim_size(0)
            var kd = x.dim_size(1)
            var n_panels = panels.dim_size(0)
            var n = n_panels * NR
            if kd % 2 != 0 or panels.dim_size(1) * 2 != kd or panels.dim_size(2) != NR or panels.dim_size(3) != 2:
                raise Error("packed_linear_bf16: panels are not [N / 16, K / 2, 16, 2] for x [M, K], K even")
            if bias.dim_size(0) != n:
                raise Error("packed_linear_bf16: bias is not [N]")
            var xp = x.unsafe_ptr()
            var wp = panels.unsafe_ptr().bitcast[BFloat16]()
            var bp = bias.unsafe_ptr()
            var rp = residual.unsafe_ptr()
            var has_residual = residual.dim_size(0) == m and residual.dim_size(1) == n
            var op = output.unsafe_ptr()
            var block = max(mr, BLOCK_BYTES // (2 * kd) // mr * mr)

            def rows(item: Int) {var xp, var wp, var bp, var rp, var has_residual, var op, var m, var kd, var n,
                                 var n_panels, var block}:
                var r0 = item * block
                var count = min(block, m - r0)
                var a = alloc[BFloat16](block * kd).unsafe_origin_cast[MutAnyOrigin]()
                round_rows(xp + r0 * kd, count * kd, a)
                var j = 0
                while j < n_panels:
                    var whole = j + np <= n_panels  # else the panels left go one at a time
                    var i = 0
                    while i < count:
                        var at = (r0 + i) * n + j * NR
                        var rows_here = min(mr, count - i)
                        if whole:
                            tile[gelu, mr, np](a + i * kd, rows_here, kd, wp + j * kd * NR, bp + j * NR,
                                               has_residual, rp + at, op + at, n)
                        else:
                            tile[gelu, mr, 1](a + i * kd, rows_here, kd, wp + j * kd * NR, bp + j * NR,
                                              has_residual, rp + at, op + at, n)
                        i += mr
                    j += np if whole else 1
                a.free()

            share_items((m + block - 1) // block, rows)


def round_rows(x: F32, count: Int, a: B16):
    """a[:count] = x[:count] rounded to bfloat16 (to nearest, ties to even)."""
    comptime W = 16
    var k = 0
    while k + W <= count:
        a.store(k, x.load[width=W](k).cast[DType.bfloat16]())
        k += W
    for t in range(k, count):
        a[t] = x[t].cast[DType.bfloat16]()


comptime V16P = UnsafePointer[V16, MutUntrackedOrigin]  # `stack_allocation`s


@always_inline
def dot2(acc: V16, a: P32, b: P32) -> V16:
    """acc[j] + a[2j] b[2j] + a[2j + 1] b[2j + 1] in float32 (`vdpbf16ps`)."""
    return llvm_intrinsic["llvm.x86.avx512bf16.dpbf16ps.512", V16](acc, a, b)


@always_inline
def accumulate[mr: Int, np: Int](acc: V16P, a: B16, lda: Int, rows: Int, w: B16, w_panel: Int, pairs: Int):
    """acc[r * np + p] = for r < mr and p < np, the float32 sums over k < 2 pairs of
    a[r * lda + k] x w[p * w_panel + (k / 2) * 32 + j * 2 + k % 2] for the 16 columns j. Rows from
    `rows` on repeat the last one."""
    var wv = stack_allocation[np, P32]()
    comptime for i in range(mr * np):
        acc[i] = V16(0)
    for g in range(pairs):
        comptime for p in range(np):
            wv[p] = (w + p * w_panel + g * 2 * NR).load[width=2 * NR](0)
        comptime for r in range(mr):
            var pair = (a + min(r, rows - 1) * lda + 2 * g).bitcast[Int32]()[0]
            var b = bitcast[DType.bfloat16, 2 * NR](SIMD[DType.int32, NR](pair))
            comptime for p in range(np):
                acc[r * np + p] = dot2(acc[r * np + p], b, wv[p])


@always_inline
def tile[gelu: Bool, mr: Int, np: Int](a: B16, rows: Int, kd: Int, panel: B16, bias: F32, add: Bool,
                                       residual: F32, y: F32, ldy: Int):
    """y[r, 0:16 np] for r < rows <= mr: the np panels [K / 2, 16, 2] one after another."""
    var acc = stack_allocation[mr * np, V16]()
    accumulate[mr, np](acc, a, kd, rows, panel, kd * NR, kd // 2)
    comptime for r in range(mr):
        if r < rows:
            comptime for p in range(np):
                store[gelu](acc[r * np + p] + bias.load[width=NR](p * NR), add, residual + r * ldy + p * NR,
                            y + r * ldy + p * NR)
