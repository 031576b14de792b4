# `packed_linear`'s register tile for one target CPU, as a program to compile, not to run:
# tests/test_max_model.py reads its assembly (`mojo build --emit asm --target-cpu ...`). Sizes come
# from the command line so that the compiler cannot fold them into the loop.
from kernels.linear import F32, MR, NR, TILE_PANELS, tile
from std.memory import alloc
from std.sys import argv


@no_inline
def one_tile(x: F32, rows: Int, kd: Int, panels: F32, bias: F32, y: F32):
    tile[False, MR, TILE_PANELS](x, kd, rows, kd, panels, bias, False, y, y, TILE_PANELS * NR)


def main():
    var n = len(argv())
    var p = alloc[Float32](MR * n * TILE_PANELS * NR).unsafe_origin_cast[MutAnyOrigin]()
    one_tile(p, n, n, p, p, p)
