# Every decoder layer's cross-attention keys and values laid out as decoder steps read them, from
# the encoder graph's one projection of the audio features for all layers: keys [T, Dh] and values
# transposed [Dh, T] per layer and head, under --precision int8 quantized with a scale per key and
# per value. One kernel instead of MAX's split, transpose, stack and quantizing ops, which took a
# cold compile tens of seconds (docs/design.md, "Start-up").
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import stack_allocation
from std.sys import llvm_intrinsic

from .threads import share_items

comptime MAX_DH = 128
comptime MAX_T = 2048  # audio positions `cross_int8` takes (large-v3's 1500 and room)
comptime W = 16  # float32 lanes per step of a key or value
comptime TB = 64  # keys per block of `head`: the values staged before their transposed write
comptime F32P = UnsafePointer[Float32, MutAnyOrigin]


@always_inline
def quantized(x: Float32, scale: Float32) -> Int8:
    """x / scale rounded to the nearest integer (ties to even, as MAX's round), within [-127, 127]."""
    var q = llvm_intrinsic["llvm.roundeven", Float32](x / scale)
    return Int8(Int(min(max(q, Float32(-127)), Float32(127))))


@extensibility.register("cross_layout")
struct CrossLayout:
    """kv float32 [B, T, L 2 d] (layer l's keys at columns 2 l d .. 2 l d + d - 1, its values the next
    d, each d = H heads of Dh) -> k [L, B, H, T, Dh] and v_t [L, B, H, Dh, T] in `dtype`: float32 as
    they are; int8 with scales k_scales and v_scales float32 [L, B, H, T] (the largest magnitude of
    each key's and each value's Dh numbers / 127, 1 for all zeros; `encoder.quantized`), x ~ q
    scale. Float32 outputs take scales [0, 0, 0, 0] (unwritten). CPU only."""

    @staticmethod
    def execute[target: StaticString, dtype: DType](
        k: OutputTensor[dtype=dtype, rank=5, ...],
        v_t: OutputTensor[dtype=dtype, rank=5, ...],
        k_scales: OutputTensor[dtype=DType.float32, rank=4, ...],
        v_scales: OutputTensor[dtype=DType.float32, rank=4, ...],
        kv: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("cross_layout runs on the CPU only")
        comptime if dtype != DType.float32 and dtype != DType.int8:
            raise Error("cross_layout: keys and values are float32 or int8")
        var layers = k.dim_size(0)
        var batch = k.dim_size(1)
        var heads = k.dim_size(2)
        var t_len = k.dim_size(3)
        var dh = k.dim_size(4)
        var d = heads * dh
        if kv.dim_size(0) != batch or kv.dim_size(1) != t_len or kv.dim_size(2) != 2 * layers * d or dh > MAX_DH:
            raise Error("cross_layout: kv is not [B, T, L 2 d] for k [L, B, H, T, Dh], Dh up to 128")
        comptime if dtype == DType.int8:
            if k_scales.dim_size(3) != t_len or v_scales.dim_size(3) != t_len:
                raise Error("cross_layout: int8 keys and values need scales [L, B, H, T]")
        var src = kv.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v_t.unsafe_ptr()
        var ksp = k_scales.unsafe_ptr()
        var vsp = v_scales.unsafe_ptr()

        def head(item: Int) {var src, var kp, var vp, var ksp, var vsp, var layers, var batch, var heads,
                             var t_len, var dh, var d}:
            # item = (l, b, h) flat: the same order as the outputs' first three axes
            var h = item % heads
            var b = (item // heads) % batch
            var l = item // (heads * batch)
            var keys = src + b * t_len * 2 * layers * d + 2 * l * d + h * dh
            var values = keys + d
            var k_out = kp + item * t_len * dh
            var v_out = vp + item * dh * t_len
            # TB values at a time staged as rows, then written transposed: TB consecutive bytes per row of v_t
            var staged = stack_allocation[TB * MAX_DH, Scalar[dtype]]()
            for t0 in range(0, t_len, TB):
                var n_t = min(TB, t_len - t0)
                for i in range(n_t):
                    var key = keys + (t0 + i) * 2 * layers * d
                    var value = values + (t0 + i) * 2 * layers * d
                    comptime if dtype == DType.int8:
                        var k_scale = scale_of(key, dh)
                        var v_scale = scale_of(value, dh)
                        ksp[item * t_len + t0 + i] = k_scale
                        vsp[item * t_len + t0 + i] = v_scale
                        quantize_row(key, dh, k_scale, (k_out + (t0 + i) * dh).bitcast[Int8]())
                        quantize_row(value, dh, v_scale, (staged + i * dh).bitcast[Int8]())
                    else:
                        copy_row(key, dh, (k_out + (t0 + i) * dh).bitcast[Float32]())
                        copy_row(value, dh, (staged + i * dh).bitcast[Float32]())
                for e in range(dh):
                    for i in range(n_t):
                        v_out[e * t_len + t0 + i] = staged[i * dh + e]
        share_items(layers * batch * heads, head)


@always_inline
def scale_of(x: F32P, n: Int) -> Float32:
    """max |x[:n]| / 127, or 1 when every x is 0."""
    var av = SIMD[DType.float32, W](0)
    var i = 0
    while i + W <= n:
        av = max(av, abs(x.load[width=W](i)))
        i += W
    var amax = av.reduce_max()
    for j in range(i, n):
        amax = max(amax, abs(x[j]))
    return amax / 127 if amax > 0 else Float32(1)


@always_inline
def quantize_row[o: MutOrigin](x: F32P, n: Int, scale: Float32, q: UnsafePointer[Int8, o]):
    """q[:n] = `quantized`(x[:n], scale), W at a time."""
    var i = 0
    while i + W <= n:
        var r = llvm_intrinsic["llvm.roundeven", SIMD[DType.float32, W]](x.load[width=W](i) / scale)
        q.store(i, min(max(r, SIMD[DType.float32, W](-127)), SIMD[DType.float32, W](127)).cast[DType.int8]())
        i += W
    for j in range(i, n):
        q[j] = quantized(x[j], scale)


@always_inline
def copy_row[o: MutOrigin](x: F32P, n: Int, y: UnsafePointer[Float32, o]):
    var i = 0
    while i + W <= n:
        y.store(i, x.load[width=W](i))
        i += W
    for j in range(i, n):
        y[j] = x[j]


@extensibility.register("cross_int8")
struct CrossInt8:
    """float32 cross K [L, B, H, T, Dh] and V^T [L, B, H, Dh, T] (`cross_layout`'s) -> k and v_t in
    int8 with their scales [L, B, H, T], the numbers `cross_layout` gives for int8 (a float32 plan's
    drafted runs read these: a quarter of the bytes). T up to 2048. CPU only."""

    @staticmethod
    def execute[target: StaticString](
        k: OutputTensor[dtype=DType.int8, rank=5, ...],
        v_t: OutputTensor[dtype=DType.int8, rank=5, ...],
        k_scales: OutputTensor[dtype=DType.float32, rank=4, ...],
        v_scales: OutputTensor[dtype=DType.float32, rank=4, ...],
        k_in: InputTensor[dtype=DType.float32, rank=5, ...],
        v_t_in: InputTensor[dtype=DType.float32, rank=5, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("cross_int8 runs on the CPU only")
        var heads = k_in.dim_size(0) * k_in.dim_size(1) * k_in.dim_size(2)  # (l, b, h) flat
        var t_len = k_in.dim_size(3)
        var dh = k_in.dim_size(4)
        if t_len > MAX_T or v_t_in.dim_size(3) != dh or v_t_in.dim_size(4) != t_len:
            raise Error("cross_int8: K is not [L, B, H, T, Dh] and V^T [L, B, H, Dh, T], T up to 2048")
        var kp = k_in.unsafe_ptr()
        var vp = v_t_in.unsafe_ptr()
        var kq = k.unsafe_ptr()
        var vq = v_t.unsafe_ptr()
        var ksp = k_scales.unsafe_ptr()
        var vsp = v_scales.unsafe_ptr()

        def head(item: Int) {var kp, var vp, var kq, var vq, var ksp, var vsp, var t_len, var dh}:
            for t in range(item * t_len, (item + 1) * t_len):  # a key: a row of Dh
                ksp[t] = scale_of(kp + t * dh, dh)
                quantize_row(kp + t * dh, dh, ksp[t], kq + t * dh)
            var values = vp + item * dh * t_len  # a value: a column of V^T [Dh, T]
            var amax = stack_allocation[MAX_T, Float32]()
            for t in range(t_len):
                amax[t] = 0
            for e in range(dh):
                for t in range(t_len):
                    amax[t] = max(amax[t], abs(values[e * t_len + t]))
            var scales = vsp + item * t_len
            for t in range(t_len):
                scales[t] = amax[t] / 127 if amax[t] > 0 else Float32(1)
            for e in range(dh):
                for t in range(t_len):
                    vq[item * dh * t_len + e * t_len + t] = quantized(values[e * t_len + t], scales[t])
        share_items(heads, head)
