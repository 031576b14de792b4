# The encoder's conv stem for the CPU as one kernel: two kernel-3, padding-1 convolutions with GELU,
# the second with stride 2, then the positional embedding added. A kernel-3 convolution over rows
# of C channels is a linear over the 3C values of three neighbouring rows, which lie side by side in
# a row-major [T, C] array: row t of the im2col matrix starts at row stride x t of the input padded
# with a zero row at each end. So both convolutions run `packed_linear`'s register tiles over the
# padded input itself, rows stride x C apart, with no im2col copy; on every core, where MAX's conv2d
# ran on one (docs/design.md, "Encoder").
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc, stack_allocation

from .linear import BLOCK_FLOATS, F32, MR, NR, TILE_PANELS, tile
from .threads import share_phases


@extensibility.register("conv_stem")
struct ConvStem:
    """mel float32 [B, C, F] -> x float32 [B, T, d], T = ceil(F / 2):
        h = gelu(conv1(mel)), x = gelu(conv2(h)) + pos[:T],
    conv1 kernel 3, padding 1, stride 1 (C -> d); conv2 kernel 3, padding 1, stride 2 (d -> d).
    panels1 float32 [d / 16, 3 C, 16] and panels2 [d / 16, 3 d, 16]: each convolution's weight as the
    im2col matrix W [3 C_in, C_out] (row j C_in + c: tap j of input channel c) cut into 16-column
    panels; bias1, bias2 float32 [d]; pos float32 [n_ctx, d], n_ctx >= T. CPU only.
    Phase 1 transposes the mel into rows of C padded with zero rows, phase 2 runs conv1 into rows of
    d padded the same way, phase 3 conv2; each phase's work items are blocks of rows."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=3, ...],
        mel: InputTensor[dtype=DType.float32, rank=3, ...],
        panels1: InputTensor[dtype=DType.float32, rank=3, ...],
        bias1: InputTensor[dtype=DType.float32, rank=1, ...],
        panels2: InputTensor[dtype=DType.float32, rank=3, ...],
        bias2: InputTensor[dtype=DType.float32, rank=1, ...],
        pos: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("conv_stem runs on the CPU only")
        var batch = mel.dim_size(0)
        var c = mel.dim_size(1)
        var frames = mel.dim_size(2)
        var d = bias1.dim_size(0)
        var t_len = output.dim_size(1)
        if t_len != (frames + 1) // 2 or output.dim_size(2) != d or d % (NR * TILE_PANELS) != 0:
            raise Error("conv_stem: the output is not [B, ceil(F / 2), d], d a multiple of 32")
        if panels1.dim_size(0) * NR != d or panels1.dim_size(1) != 3 * c or panels2.dim_size(1) != 3 * d:
            raise Error("conv_stem: panels are not [d / 16, 3 C, 16] and [d / 16, 3 d, 16]")
        if bias2.dim_size(0) != d or pos.dim_size(0) < t_len or pos.dim_size(1) != d:
            raise Error("conv_stem: bias2 is not [d] or pos not [n_ctx >= T, d]")
        var rows_in = frames + 2  # the padded rows of each window
        var xin = alloc[Float32](batch * rows_in * c).unsafe_origin_cast[MutAnyOrigin]()
        var h = alloc[Float32](batch * rows_in * d).unsafe_origin_cast[MutAnyOrigin]()
        var block1 = max(MR, BLOCK_FLOATS // (3 * c) // MR * MR)
        var block2 = max(MR, BLOCK_FLOATS // (3 * d) // MR * MR)
        var per1 = (frames + block1 - 1) // block1  # blocks per window
        var per2 = (t_len + block2 - 1) // block2
        var items = stack_allocation[3, Int]()
        items[0] = batch * per1
        items[1] = batch * per1
        items[2] = batch * per2
        var mp = mel.unsafe_ptr()
        var w1 = panels1.unsafe_ptr()
        var b1 = bias1.unsafe_ptr()
        var w2 = panels2.unsafe_ptr()
        var b2 = bias2.unsafe_ptr()
        var pp = pos.unsafe_ptr()
        var op = output.unsafe_ptr()

        def phase(p: Int, item: Int) {var xin, var h, var mp, var w1, var b1, var w2, var b2, var pp, var op, var c,
                                       var frames, var d, var t_len, var rows_in, var block1, var block2, var per1,
                                       var per2}:
            if p == 0:  # a block of frames of the mel [C, F] into rows of the padded [F + 2, C]
                var b = item // per1
                var f0 = (item % per1) * block1
                var f1 = min(f0 + block1, frames)
                var src = mp + b * c * frames
                var dst = xin + b * rows_in * c
                for ch in range(c):
                    if f0 == 0:
                        dst[ch] = 0
                    if f1 == frames:
                        dst[(rows_in - 1) * c + ch] = 0
                    for f in range(f0, f1):
                        dst[(f + 1) * c + ch] = src[ch * frames + f]
                return
            if p == 1:  # conv1 for a block of rows: h row f + 1 from input rows f .. f + 2
                var b = item // per1
                var f0 = (item % per1) * block1
                var f1 = min(f0 + block1, frames)
                var src = xin + b * rows_in * c
                var dst = h + b * rows_in * d
                if f0 == 0:
                    for e in range(d):
                        dst[e] = 0
                if f1 == frames:
                    for e in range(d):
                        dst[(rows_in - 1) * d + e] = 0
                conv(src + f0 * c, c, f1 - f0, 3 * c, w1, b1, d, False, dst, dst + (f0 + 1) * d)
                return
            var b = item // per2  # conv2: output row t from h rows 2t .. 2t + 2, plus pos[t]
            var t0 = (item % per2) * block2
            var t1 = min(t0 + block2, t_len)
            conv(h + b * rows_in * d + 2 * t0 * d, 2 * d, t1 - t0, 3 * d, w2, b2, d, True, pp + t0 * d,
                       op + (b * t_len + t0) * d)

        share_phases(items, 3, phase)
        xin.free()
        h.free()


def conv(x: F32, ldx: Int, rows: Int, kd: Int, panels: F32, bias: F32, n: Int, add: Bool, residual: F32, y: F32):
    """y [rows, n] (rows n apart) = residual (when add) + gelu(rows of x, ldx apart, each kd long, @ the
    panels [n / 16, kd, 16] + bias): `packed_linear`'s tiles, TILE_PANELS panels at a time."""
    for j in range(0, n // NR, TILE_PANELS):
        var i = 0
        while i < rows:
            tile[True, MR, TILE_PANELS](x + i * ldx, ldx, min(MR, rows - i), kd, panels + j * kd * NR, bias + j * NR,
                                        add, residual + i * n + j * NR, y + i * n + j * NR, n)
            i += MR
