# `packed_linear_int8`'s register tile for one target CPU, as a program to compile, not to run:
# tests/test_max_model.py reads its assembly (`mojo build --emit asm --target-cpu ...`), as
# tile_asm.mojo's for the float32 tile. Sizes come from the command line so that the compiler
# cannot fold them into the loop.
from kernels.linear import NR
from kernels.linear_int8 import BYTE_DOT, F32, I8, I32, MR, TILE_PANELS, U8, madd_tile, tile
from std.memory import alloc
from std.sys import argv


@no_inline
def one_tile(q: U8, rows: Int, kd: Int, panels: I8, scale: F32, zero: I32, y: F32):
    comptime if BYTE_DOT:
        tile[False, MR, TILE_PANELS](q, rows, kd, panels, scale, zero, scale, zero, scale, False, y, y,
                                     TILE_PANELS * NR)
    else:
        madd_tile[False, MR](q.bitcast[Int16](), rows, kd, panels, scale, zero, scale, zero, scale, False, y, y, NR)


def main():
    var n = len(argv())
    var p = alloc[Float32](MR * n * TILE_PANELS * NR).unsafe_origin_cast[MutAnyOrigin]()
    var z = alloc[Int32](MR * n * TILE_PANELS * NR).unsafe_origin_cast[MutAnyOrigin]()
    one_tile(p.bitcast[UInt8](), n, n, p.bitcast[Int8](), p, z, p)
