# The AMX tile kernels as a program to compile, not to run: tests/test_max_model.py reads its
# assembly for a CPU with AMX (`mojo build --emit asm --target-cpu sapphirerapids`), so that they are
# compiled on machines without AMX too. Sizes come from the command line, as in tile_int8_asm.mojo.
from kernels.amx import configure_tiles, release_tiles
from kernels.encoder_attention import p_v_amx, scores_amx
from kernels.linear_bf16 import B16
from kernels.linear_int8 import F32, I8, I32, U8, tiles
from std.memory import alloc
from std.sys import argv


@no_inline
def int8_linear(q: U8, count: Int, kd: Int, panels: I8, scale: F32, zero: I32, y: F32):
    configure_tiles()
    tiles[False](q, count, kd, panels, count, scale, zero, scale, zero, scale, False, y, y, kd)
    release_tiles()


@no_inline
def bf16_attention(halves: B16, n: Int, dh: Int, scores: F32):
    configure_tiles()
    scores_amx(halves, dh, halves, scores, n, n)
    p_v_amx(halves, n, halves, scores, dh)
    release_tiles()


def main():
    var n = len(argv())
    var p = alloc[Float32](1 << 20).unsafe_origin_cast[MutAnyOrigin]()
    var z = alloc[Int32](1 << 20).unsafe_origin_cast[MutAnyOrigin]()
    int8_linear(p.bitcast[UInt8](), n, n, p.bitcast[Int8](), p, z, p)
    bf16_attention(p.bitcast[BFloat16](), n, n, p)
