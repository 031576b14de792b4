# `packed_linear_bf16`'s register tile, as a program to compile, not to run: tests/test_bf16.py reads
# its assembly (`mojo build --emit asm --target-cpu ...`) for CPUs with AVX512_BF16, as
# tile_int8_asm.mojo's for the int8 tile. Sizes come from the command line so that the compiler
# cannot fold them into the loop.
from kernels.linear import NR
from kernels.linear_bf16 import B16, F32, MR, TILE_PANELS, tile
from std.memory import alloc
from std.sys import argv


@no_inline
def one_tile(a: B16, rows: Int, kd: Int, panels: B16, bias: F32, y: F32):
    tile[False, MR, TILE_PANELS](a, rows, kd, panels, bias, False, y, y, TILE_PANELS * NR)


def main():
    var n = len(argv())
    var p = alloc[Float32](MR * n * TILE_PANELS * NR).unsafe_origin_cast[MutAnyOrigin]()
    one_tile(p.bitcast[BFloat16](), n, n, p.bitcast[BFloat16](), p, p)
