# The encoder kernels' register tile for one target CPU, as a program to compile, not to run:
# tests/test_max_model.py reads its assembly (`mojo build --emit asm --target-cpu ...`).
from kernels.linear import F32, MR, NR, TILE_PANELS, accumulate
from std.memory import alloc, stack_allocation


@no_inline
def tile(x: F32, kd: Int, panels: F32, y: F32):
    var acc = stack_allocation[MR * TILE_PANELS, SIMD[DType.float32, NR]]()
    accumulate[MR, TILE_PANELS](acc, x, kd, 1, MR, panels, kd * NR, kd)
    comptime for i in range(MR * TILE_PANELS):
        y.store(i * NR, acc[i])


def main():
    var p = alloc[Float32](MR * TILE_PANELS * NR).unsafe_origin_cast[MutAnyOrigin]()
    tile(p, 0, p, p)
