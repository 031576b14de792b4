# Layer norm over rows for the CPU: one kernel for every layer norm of the CPU kernels' graphs.
# MAX's layer norm op costs a cold compile several seconds of its own (docs/design.md, "Start-up");
# this one is a few lines, shared with `decoder_layer_step`.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import sqrt

from .threads import share_items

comptime W = 8  # float32 lanes of the sums (their order is part of the result)
comptime EPS = Float32(1e-5)
comptime ROWS = 64  # rows per work item
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


@extensibility.register("layer_norm_rows")
struct LayerNormRows:
    """y[i] = `layer_norm`(x[i]) for every row: x float32 [M, d], gamma and beta float32 [d] ->
    y float32 [M, d], d a multiple of 8. CPU only."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        gamma: InputTensor[dtype=DType.float32, rank=1, ...],
        beta: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("layer_norm_rows runs on the CPU only")
        var m = x.dim_size(0)
        var d = x.dim_size(1)
        if d % W != 0 or gamma.dim_size(0) != d or beta.dim_size(0) != d:
            raise Error("layer_norm_rows: d is not a multiple of 8, or gamma and beta are not [d]")
        var xp = x.unsafe_ptr()
        var gp = gamma.unsafe_ptr()
        var bp = beta.unsafe_ptr()
        var op = output.unsafe_ptr()

        def rows(item: Int) {var xp, var gp, var bp, var op, var m, var d}:
            for i in range(item * ROWS, min((item + 1) * ROWS, m)):
                layer_norm(xp + i * d, d, gp, bp, op + i * d)

        share_items((m + ROWS - 1) // ROWS, rows)


@extensibility.register("layer_norm_gather")
struct LayerNormGather:
    """y[i] = `layer_norm`(x[rows[i]]): x float32 [B, d], rows int64 [k], gamma and beta float32 [d]
    -> y float32 [k, d] (the token step's rows whose logits are wanted). CPU only."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        rows: InputTensor[dtype=DType.int64, rank=1, ...],
        gamma: InputTensor[dtype=DType.float32, rank=1, ...],
        beta: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("layer_norm_gather runs on the CPU only")
        var d = x.dim_size(1)
        if d % W != 0 or gamma.dim_size(0) != d or beta.dim_size(0) != d:
            raise Error("layer_norm_gather: d is not a multiple of 8, or gamma and beta are not [d]")
        for i in range(rows.dim_size(0)):
            var r = Int(rows.unsafe_ptr()[i])
            if r < 0 or r >= x.dim_size(0):
                raise Error("layer_norm_gather: a row is out of range")
            layer_norm(x.unsafe_ptr() + r * d, d, gamma.unsafe_ptr(), beta.unsafe_ptr(), output.unsafe_ptr() + i * d)
