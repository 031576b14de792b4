"""Whisper's building blocks as MAX Graph ops, and the CPU kernels' custom ops (the Mojo package that
holds them: `kernel_package`). Shapes: B batch, T/S sequence, d model width, H heads, Dh = d / H.
Activations run in the model dtype; layer norm and attention in float32, as openai-whisper does
under fp16."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, StaticDim, TensorType, TensorValue, Weight, ops

from .weights import bfloat16_bits, quantize_int4_groups, quantize_int8, vocab_cluster_panels, vocab_clusters

LN_EPS = 1e-5
PANEL = 16  # columns per panel of `packed_linear` weights (NR in linear.mojo)
INT4_GROUP = 64  # weights per scale of `vocab_projection_int4`'s 4-bit copy (G4 in vocab_projection.mojo)
TEXT_TOKENS = 50256  # GPT-2's byte-pair tokens come first in Whisper's vocabularies, the special ones after
# a drafted run's projection searches the special rows and the DRAFT_CLUSTERS of VOCAB_CLUSTERS
# clusters of text rows nearest each state (`vocab_draft_int4`; docs/design.md#drafted-runs)
VOCAB_CLUSTERS, DRAFT_CLUSTERS = 256, 96
MACHINE_TILE = (0, 0)  # the CPU kernels' register tile as they pick it for the machine's vector width


class WeightBank:
    """Creates graph `Weight`s by name, with shapes taken from the arrays that will fill them.

    The compiled graph depends only on names, shapes and dtypes, so MAX caches it on disk and
    reuses it for every checkpoint of the same shape; values arrive through `registry()`.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        dtype: DType,
        device: DeviceRef,
        copies: dict[tuple[str, str], np.ndarray] | None = None,
    ):
        self.arrays, self.dtype, self.device = arrays, dtype, device
        # graph name -> (Weight, what makes its array in the Weight's dtype and layout)
        self.used: dict[str, tuple[Weight, Callable[[], np.ndarray]]] = {}
        # (kind, array name) -> a float16 or int8 copy of the array, made once (banks built together
        # may share them: `copies`)
        self.copies: dict[tuple[str, str], np.ndarray] = {} if copies is None else copies

    def __call__(self, name: str) -> Weight:
        def fill() -> np.ndarray:
            if self.dtype == DType.float16:
                return self._float16(name)
            return np.ascontiguousarray(self.arrays[name], dtype=np.float32)

        return self._weight(name, self.dtype, self.arrays[name].shape, fill)

    def half(self, name: str) -> Weight:
        """The array stored as float16 (for `few_row_linear`; only exact when `float16_exact`)."""
        return self._weight(f"{name}.fp16", DType.float16, self.arrays[name].shape, lambda: self._float16(name))

    def panels(self, name: str) -> Weight:
        """The float32 array [..., N] as the matrix [K, N] of its leading axes flattened, in N / 16
        column panels [N / 16, K, 16]: a linear's [K, N] for `packed_linear`; a kernel-3
        convolution's `*.weight_rscf` [1, 3, C_in, C_out] as its im2col matrix [3 C_in, C_out] (row
        j C_in + c: tap j of channel c) for `conv_stem`."""
        n = self.arrays[name].shape[-1]
        k = self.arrays[name].size // n
        return self._weight(
            f"{name}.panels",
            DType.float32,
            (n // PANEL, k, PANEL),
            lambda: np.ascontiguousarray(
                self.arrays[name].reshape(k, n // PANEL, PANEL).transpose(1, 0, 2), dtype=np.float32
            ),
        )

    def int8_panels(self, name: str) -> tuple[Weight, Weight, Weight]:
        """The linear weight `name` quantized per output channel (`int8`) for `packed_linear_int8`:
        int8 panels [N / 16, K / 4, 16, 4] of W^T [K, N] (each 4 consecutive k of an output side by
        side, as `vpdpbusd` takes them), the float32 scales [N] and each output's sum of its int8
        weights, int32 [N]."""
        n, k = self._int8(name)[0].shape
        return (
            self._weight(
                f"{name}.int8_panels",
                DType.int8,
                (n // PANEL, k // 4, PANEL, 4),
                lambda: np.ascontiguousarray(
                    self._int8(name)[0].reshape(n // PANEL, PANEL, k // 4, 4).transpose(0, 2, 1, 3)
                ),
            ),
            self._weight(f"{name}.int8_scales", DType.float32, (n,), lambda: self._int8(name)[1]),
            self._weight(
                f"{name}.int8_sums", DType.int32, (n,), lambda: self._int8(name)[0].sum(axis=1, dtype=np.int32)
            ),
        )

    def bf16_panels(self, name: str) -> Weight:
        """The linear weight `name` rounded to bfloat16 for `packed_linear_bf16`: W^T [K, N] as
        panels [N / 16, K / 2, 16, 2] (each 2 consecutive k of an output side by side, as `vdpbf16ps`
        takes them), the bfloat16 bits as uint16."""
        w_t = self.arrays[name] if name.endswith(".weight_t") else self.arrays[name].T
        k, n = w_t.shape
        return self._weight(
            f"{name}.bf16_panels",
            DType.uint16,
            (n // PANEL, k // 2, PANEL, 2),
            lambda: np.ascontiguousarray(
                bfloat16_bits(w_t).reshape(k // 2, 2, n // PANEL, PANEL).transpose(2, 0, 3, 1)
            ),
        )

    def int8_rows(self, name: str) -> tuple[Weight, Weight]:
        """The linear weight `name` quantized per output channel (`int8`) for `few_row_linear_int8`:
        int8 W [N, K] and the float32 scales [N]."""
        n, k = self._int8(name)[0].shape
        return (
            self._weight(f"{name}.int8", DType.int8, (n, k), lambda: self._int8(name)[0]),
            self._weight(f"{name}.int8_scales", DType.float32, (n,), lambda: self._int8(name)[1]),
        )

    def int4_panels(self, name: str) -> tuple[Weight, Weight]:
        """The linear weight `name` W [N, K] (K a multiple of 64) as `vocab_projection_int4`'s 4-bit
        copy (`quantize_int4_groups`): N padded with zero rows to P = ceil(N / 16) panels of 16 rows;
        nibbles uint8 [P, K / 8, 64], byte 4c + i of block t holding row c's weights k = 8t + i
        (low nibble) and 8t + 4 + i (high); the group scales float32 [P, K / 64, 16]."""
        n, k = self.arrays[name].shape
        panels = -(-n // PANEL)

        def padded() -> tuple[np.ndarray, np.ndarray]:
            if ("int4", name) not in self.copies:
                q, scales = quantize_int4_groups(self.arrays[name], INT4_GROUP)
                pad = panels * PANEL - n
                self.copies["int4", name] = np.pad(q, ((0, pad), (0, 0)), constant_values=8)
                self.copies["int4 scales", name] = np.pad(scales, ((0, pad), (0, 0)), constant_values=1)
            return self.copies["int4", name], self.copies["int4 scales", name]

        return self._int4_layout(f"{name}.int4", panels, k, padded)

    def int4_clusters(self, name: str) -> tuple[Weight, ...]:
        """The linear weight `name` W [N, K] for `vocab_draft_int4`: its rows in groups
        (`vocab_clusters`: the special rows, then VOCAB_CLUSTERS clusters of the text rows), as
        `int4_panels`' 4-bit copy of the rows in group order (P panels, a padding row zero);
        each grouped row's vocabulary row int32 [16 P] (-1: padding); each group's first panel, then
        the panels used, int32 [G + 1]; the groups' centroids float32 [G, K]."""
        n, k = self.arrays[name].shape

        def grouped() -> tuple[np.ndarray, ...]:
            if ("clusters", name) not in self.copies:
                rows, starts, centroids = vocab_clusters(self.arrays[name], min(n, TEXT_TOKENS), VOCAB_CLUSTERS, PANEL)
                q, scales = quantize_int4_groups(self.arrays[name], INT4_GROUP)
                real = rows[:, None] >= 0  # a padding row's nibbles are zeros (stored + 8), its scales 1
                q, scales = np.where(real, q[rows], np.uint8(8)), np.where(real, scales[rows], np.float32(1))
                self.copies["clusters", name] = (rows, starts, centroids, q, scales)
            return self.copies["clusters", name]

        rows = vocab_cluster_panels(n, VOCAB_CLUSTERS, PANEL) * PANEL
        groups = VOCAB_CLUSTERS + 1
        return (
            *self._int4_layout(f"{name}.int4_clustered", rows // PANEL, k, lambda: grouped()[3:]),
            self._weight(f"{name}.cluster_rows", DType.int32, (rows,), lambda: grouped()[0]),
            self._weight(f"{name}.cluster_starts", DType.int32, (groups + 1,), lambda: grouped()[1]),
            self._weight(f"{name}.centroids", DType.float32, (groups, k), lambda: grouped()[2]),
        )

    def _int4_layout(self, name: str, panels: int, k: int, padded: Callable) -> tuple[Weight, Weight]:
        """4-bit rows and their group scales (`padded()`: uint8 [16 P, K], float32 [16 P, K / 64])
        as `vocab_projection_int4` reads them: nibbles [P, K / 8, 64], scales [P, K / 64, 16]."""

        def nibbles() -> np.ndarray:
            q = padded()[0].reshape(panels, PANEL, k // 8, 2, 4).transpose(0, 2, 1, 3, 4)
            return np.ascontiguousarray((q[:, :, :, 0] | (q[:, :, :, 1] << 4)).reshape(panels, k // 8, 4 * PANEL))

        return (
            self._weight(f"{name}_nibbles", DType.uint8, (panels, k // 8, 4 * PANEL), nibbles),
            self._weight(
                f"{name}_scales",
                DType.float32,
                (panels, k // INT4_GROUP, PANEL),
                lambda: np.ascontiguousarray(padded()[1].reshape(panels, PANEL, k // INT4_GROUP).transpose(0, 2, 1)),
            ),
        )

    def flat(self, graph_name: str, names: list[str], dtype: DType) -> Weight:
        """The arrays named, flattened and concatenated in order into one 1-D weight: as float16
        copies for a float16 weight (only exact when `float16_exact`), quantized per output row
        for an int8 one; a name "W.int8_scales" is linear weight W's int8 scales."""

        def part(name: str) -> np.ndarray:
            if name.endswith(".int8_scales"):
                return self._int8(name.removesuffix(".int8_scales"))[1]
            return {DType.float16: self._float16, DType.int8: lambda n: self._int8(n)[0]}.get(
                dtype, self.arrays.__getitem__
            )(name)

        parts = [part(n) for n in names]  # cached: quantizing or copying each once
        return self._weight(
            graph_name,
            dtype,
            (sum(p.size for p in parts),),
            lambda: np.concatenate([p.ravel() for p in parts]).astype(dtype.to_numpy()),
        )

    def float16_exact(self, prefix: str) -> bool:
        """Whether every value of the arrays named `prefix...` is a float16 number (Whisper's
        published weights are). The float16 copies it makes are the ones `registry()` gives."""
        return all(
            np.array_equal(self._float16(name), array) for name, array in self.arrays.items() if name.startswith(prefix)
        )

    def _float16(self, name: str) -> np.ndarray:
        if ("float16", name) not in self.copies:
            with np.errstate(over="ignore"):  # out of float16's range: inf, and so not exact
                # C order: MAX takes only contiguous weights (arrays may be transposed views)
                self.copies["float16", name] = np.ascontiguousarray(self.arrays[name], dtype=np.float16)
        return self.copies["float16", name]

    def _int8(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The linear weight `name` (W [d_out, d_in]; `*.weight_t` arrays hold W^T) quantized per
        output channel (`weights.quantize_int8`), made once: int8 W [d_out, d_in], scales [d_out]."""
        if ("int8", name) not in self.copies:
            array = self.arrays[name]
            q, scales = quantize_int8(array.T if name.endswith(".weight_t") else array)
            self.copies["int8", name], self.copies["int8 scales", name] = np.ascontiguousarray(q), scales
        return self.copies["int8", name], self.copies["int8 scales", name]

    def _weight(self, graph_name: str, dtype: DType, shape, fill: Callable[[], np.ndarray]) -> Weight:
        if graph_name not in self.used:
            self.used[graph_name] = Weight(graph_name, dtype, shape, device=self.device), fill
        return self.used[graph_name][0]

    def registry(self) -> dict[str, np.ndarray]:
        """Arrays for the weights this graph used, each in its Weight's dtype and shape, C-contiguous
        (checked here: MAX rejects anything else on a device, but not when compiling for a virtual one)."""
        arrays = {}
        for name, (weight, fill) in sorted(self.used.items()):
            array = fill()
            shape = tuple(int(d) for d in weight.shape)
            if array.dtype != weight.dtype.to_numpy() or array.shape != shape or not array.flags.c_contiguous:
                raise ValueError(
                    f"weight {name}: the array is {array.dtype} {array.shape}"
                    f"{'' if array.flags.c_contiguous else ', not C-contiguous'}; "
                    f"the graph's Weight is {weight.dtype} {shape}"
                )
            arrays[name] = array
        return arrays


def dim_value(dim) -> TensorValue:
    """A (possibly symbolic) dimension as an int64 scalar tensor, e.g. for slice bounds."""
    return ops.shape_to_tensor([dim]).reshape([]).cast(DType.int64)


Linear = Callable[[TensorValue], TensorValue]
# (weights, prefix) -> the linear layer `{prefix}.weight*` (+ `{prefix}.bias`) as ops or as a kernel
MakeLinear = Callable[["WeightBank", str], Linear]
# the encoder's linears: (x, residual=None) -> residual + act(x @ W + b), made by
# MakeEncoderLinear (weights, prefix, gelu=False)
ResidualLinear = Callable[..., TensorValue]
MakeEncoderLinear = Callable[..., ResidualLinear]


def linear(w: WeightBank, prefix: str, gelu: bool = False) -> ResidualLinear:
    """x [..., d_in] @ `{prefix}.weight_t` [d_in, d_out] + `{prefix}.bias`, then GELU if `gelu`,
    then + residual if given."""
    weight, bias = w(f"{prefix}.weight_t"), w(f"{prefix}.bias")

    def apply(x: TensorValue, residual: TensorValue | None = None) -> TensorValue:
        y = ops.matmul(x, weight) + bias
        y = ops.gelu(y) if gelu else y
        return residual + y if residual is not None else y

    return apply


def linear_few_rows(w: WeightBank, prefix: str, row_sums: bool = True) -> Linear:
    """x [..., d_in] -> [..., d_out] as (W [d_out, d_in] @ x^T)^T + b, for decoder steps.

    With one or a few rows MAX streams W through a matrix-vector product faster this way than
    x @ W^T, and a decoder step is bound by reading weights. With `row_sums` and one row a sequence
    (a token step's x [B, 1, d_in]), each output's products summed instead: MAX fuses them into one
    row reduction over d_out rows, where a GPU's matrix-vector kernel gives a 384-wide layer 12
    blocks (docs/design.md#where-a-gpus-time-goes).
    """
    weight, bias = w(f"{prefix}.weight"), w.arrays.get(f"{prefix}.bias")
    b = w(f"{prefix}.bias") if bias is not None else None

    def apply(x: TensorValue) -> TensorValue:
        *lead, d_in = x.shape
        if row_sums and _static_one(x.shape[-2]):
            y = ops.sum(weight * ops.unsqueeze(x, -2), axis=-1)
        else:
            y = ops.transpose(ops.matmul(weight, ops.transpose(ops.reshape(x, [-1, d_in]), 0, 1)), 0, 1)
        y = ops.reshape(y, [*lead, weight.shape[0]])
        return y + b if b is not None else y

    return apply


def few_row_linear(w: WeightBank, prefix: str) -> Linear:
    """`linear_few_rows` as one CPU kernel (`kernels/linear.mojo`) over the weight stored as
    float16, widened to float32 in registers: the float32 result for weights that are
    `WeightBank.float16_exact`, reading half the bytes. float32 x only."""
    return _few_row_kernel(w, prefix, "few_row_linear", [w.half(f"{prefix}.weight")])


def few_row_linear_int8(w: WeightBank, prefix: str) -> Linear:
    """`few_row_linear` over the weight quantized per output row to int8 (`WeightBank.int8_rows`):
    each weight widened to float32 in registers, the row's sum scaled once; a quarter of float32's
    bytes. float32 x only."""
    return _few_row_kernel(w, prefix, "few_row_linear_int8", list(w.int8_rows(f"{prefix}.weight")))


def vocab_projection_int4(w: WeightBank, prefix: str) -> Linear:
    """`few_row_linear_int8` for the output projection (no bias) in two passes
    (`kernels/vocab_projection.mojo`): every logit from a 4-bit copy of the weight
    (`WeightBank.int4_panels`, x quantized per row to int8), then those within a margin of each
    row's largest again from the int8 rows, as `few_row_linear_int8` computes them. float32 x only."""
    if f"{prefix}.bias" in w.arrays:
        raise ValueError(f"vocab_projection_int4: {prefix} has a bias")
    weight = [*w.int4_panels(f"{prefix}.weight"), *w.int8_rows(f"{prefix}.weight")]
    return _row_kernel("vocab_projection_int4", weight, weight[2].shape[0])  # d_out: the int8 rows'


def vocab_draft_int4(w: WeightBank, prefix: str) -> Linear:
    """A drafted run's projection (`kernels/vocab_projection.mojo`): `vocab_projection_int4` over the
    special rows and the DRAFT_CLUSTERS clusters of text rows whose centroids score highest against
    each row of x (`WeightBank.int4_clusters`), -inf for every other row: about a third of the
    4-bit pass's bytes. float32 x only."""
    weight = [*w.int4_clusters(f"{prefix}.weight"), *w.int8_rows(f"{prefix}.weight")]
    return _row_kernel("vocab_draft_int4", weight, weight[-2].shape[0], {"searched": DRAFT_CLUSTERS})


def _few_row_kernel(w: WeightBank, prefix: str, op: str, weight: list) -> Linear:
    if f"{prefix}.bias" in w.arrays:
        bias = w(f"{prefix}.bias")
    else:
        bias = ops.constant(np.zeros(0, np.float32), DType.float32, device=w.device)
    return _row_kernel(op, [*weight, bias], weight[0].shape[0])


def _row_kernel(op: str, inputs: list, d_out: int, parameters: dict | None = None) -> Linear:
    """x [..., d_in] -> op(x's rows, *inputs) [..., d_out]: the rows flattened for the kernel and back."""

    def apply(x: TensorValue) -> TensorValue:
        *lead, d_in = x.shape
        flat = ops.reshape(x, [-1, d_in])
        out = TensorType(DType.float32, [flat.shape[0], d_out], device=x.device)
        y = ops.custom(op, x.device, [flat, *inputs], [out], parameters=parameters)[0].tensor
        return ops.reshape(y, [*lead, d_out])

    return apply


def packed_linear(
    w: WeightBank, prefix: str, gelu: bool = False, tile: tuple[int, int] = MACHINE_TILE
) -> ResidualLinear:
    """`linear` as one CPU kernel (`kernels/linear.mojo`) for many rows (the encoder's 1500),
    GELU and residual included: the weight [K, N] is held as 16-column panels. float32.
    `tile` (rows, panels) replaces the register tile the kernel picks for the machine's vectors."""
    return _packed_kernel(
        w,
        prefix,
        "packed_linear",
        [w.panels(f"{prefix}.weight_t")],
        {"gelu": gelu, "tile_rows": tile[0], "tile_panels": tile[1]},
    )


def packed_linear_int8(
    w: WeightBank,
    prefix: str,
    gelu: bool = False,
    tile: tuple[int, int] = MACHINE_TILE,
    emulate: bool = False,
    amx: bool = False,
) -> ResidualLinear:
    """`packed_linear` in int8 (`kernels/linear_int8.mojo`): the weight quantized per column at load
    (`WeightBank.int8_panels`), x per row in the kernel, exact int32 sums with the machine's byte
    dot products. `emulate` runs the instructions of a CPU without VNNI, `amx` AMX tiles where the
    kernels compile for them (the caller has `cpu_features.amx_permitted`): the same numbers."""
    name = f"{prefix}.weight_t" if f"{prefix}.weight_t" in w.arrays else f"{prefix}.weight"  # the decoder's: W
    return _packed_kernel(
        w,
        prefix,
        "packed_linear_int8",
        list(w.int8_panels(name)),
        {"gelu": gelu, "tile_rows": tile[0], "tile_panels": tile[1], "emulate": emulate, "amx": amx},
    )


def packed_linear_bf16(
    w: WeightBank, prefix: str, gelu: bool = False, tile: tuple[int, int] = MACHINE_TILE
) -> ResidualLinear:
    """`packed_linear` in bfloat16 (`kernels/linear_bf16.mojo`, AVX512_BF16 only): the weight rounded
    to bfloat16 at load (`WeightBank.bf16_panels`), x per row in the kernel, float32 sums of the
    exact products by `vdpbf16ps`."""
    name = f"{prefix}.weight_t" if f"{prefix}.weight_t" in w.arrays else f"{prefix}.weight"  # the decoder's: W
    return _packed_kernel(
        w,
        prefix,
        "packed_linear_bf16",
        [w.bf16_panels(name)],
        {"gelu": gelu, "tile_rows": tile[0], "tile_panels": tile[1]},
    )


def _packed_kernel(w: WeightBank, prefix: str, op: str, weight: list, parameters: dict) -> ResidualLinear:
    bias = w(f"{prefix}.bias")

    def apply(x: TensorValue, residual: TensorValue | None = None) -> TensorValue:
        *lead, d_in = x.shape
        flat = ops.reshape(x, [-1, d_in])
        if residual is None:  # [0, 0]: the kernel adds none
            add = ops.constant(np.zeros((0, 0), np.float32), DType.float32, device=x.device)
        else:
            add = ops.reshape(residual, [-1, bias.shape[0]])
        out = TensorType(DType.float32, [flat.shape[0], bias.shape[0]], device=x.device)
        y = ops.custom(op, x.device, [flat, *weight, bias, add], [out], parameters=parameters)[0].tensor
        return ops.reshape(y, [*lead, bias.shape[0]])

    return apply


def packed_linear_fits(d_out: int) -> bool:
    """Whether the output width is a whole number of panels; every Whisper's widths are."""
    return d_out % PANEL == 0


def few_row_linear_fits(d_in: int) -> bool:
    """The kernel's limits (MAX_D_IN and the SIMD width in linear.mojo); every Whisper fits."""
    return d_in % 8 == 0 and d_in <= 5120


def layer_norm(w: WeightBank, prefix: str, x: TensorValue) -> TensorValue:
    out = ops.layer_norm(
        x.cast(DType.float32),
        w(f"{prefix}.weight").cast(DType.float32),
        w(f"{prefix}.bias").cast(DType.float32),
        epsilon=LN_EPS,
    )
    return out.cast(x.dtype)


def layer_norm_gather(w: WeightBank, prefix: str, x: TensorValue, rows: TensorValue) -> TensorValue:
    """`layer_norm_kernel` of the rows `rows` (int64 [k]) of x float32 [B, d] -> [k, d], one CPU kernel."""
    out = TensorType(DType.float32, [rows.shape[0], x.shape[1]], device=x.device)
    inputs = [x, rows, w(f"{prefix}.weight"), w(f"{prefix}.bias")]
    return ops.custom("layer_norm_gather", x.device, inputs, [out])[0].tensor


def token_embedding(w: WeightBank, tokens: TensorValue, positions: TensorValue) -> TensorValue:
    """The decoder's input for one new token of each of B sequences as one CPU kernel
    (`kernels/decoder_layer.mojo`): tokens int64 [B, 1], positions int64 [B] (negative: a row
    sitting the step out, which reads position 0) -> float32 [B, d], the token embedding read from
    its float16 copy (the one `few_row_linear` reads as the output projection)."""
    table = w.half("decoder.token_embedding.weight")
    out = TensorType(DType.float32, [tokens.shape[0], table.shape[1]], device=tokens.device)
    inputs = [tokens, positions, table, w("decoder.positional_embedding")]
    return ops.custom("token_embedding", tokens.device, inputs, [out])[0].tensor


def layer_norm_kernel(w: WeightBank, prefix: str, x: TensorValue) -> TensorValue:
    """`layer_norm` as one CPU kernel (`kernels/layer_norm.mojo`), float32 x [..., d], d a multiple of 8."""
    *lead, d = x.shape
    flat = ops.reshape(x, [-1, d])
    out = TensorType(DType.float32, flat.shape, device=x.device)
    y = ops.custom("layer_norm_rows", x.device, [flat, w(f"{prefix}.weight"), w(f"{prefix}.bias")], [out])[0].tensor
    return ops.reshape(y, [*lead, d])


def split_heads(x: TensorValue, n_head: int) -> TensorValue:
    """[B, T, d] -> [B, H, T, Dh]"""
    b, t, d = x.shape
    return ops.permute(ops.reshape(x, [b, t, n_head, int(d) // n_head]), [0, 2, 1, 3])


def merge_heads(x: TensorValue) -> TensorValue:
    """[B, H, T, Dh] -> [B, T, d]"""
    b, h, t, dh = x.shape
    return ops.reshape(ops.permute(x, [0, 2, 1, 3]), [b, t, h * dh])


def attention_scores(q: TensorValue, k_t: TensorValue) -> TensorValue:
    """q [B, H, T, Dh], k_t [B, H, Dh, S] (keys transposed) -> float32 scaled scores [B, H, T, S].

    Whisper scales q and k each by Dh^-1/4; one Dh^-1/2 on the product is the same up to rounding.
    Written `(q @ k^T) * scale` and followed by softmax and `@ v`, MAX's CPU compiler fuses the
    whole attention into its flash-attention kernel. (Decoder steps use `attention_scores_few_rows`.)
    """
    q, k_t = _widened(q), _widened(k_t)
    return (ops.matmul(q, k_t) * (int(q.shape[-1]) ** -0.5)).cast(DType.float32)


def _widened(x: TensorValue) -> TensorValue:
    """x in float32: under fp16 attention runs in float32 from q, k and v to its output. Its scores
    are dot products in the hundreds, where float16 keeps only ~0.1-0.5: rounded so, the softmax
    weights come out several % wrong (PyTorch's attention keeps them in float32 under fp16 too).
    And MAX fuses q @ k^T, softmax, @ v into one kernel that needs q, k and v of one dtype."""
    return x.cast(DType.float32) if x.dtype != DType.float32 else x


def attend(scores: TensorValue, v: TensorValue, mask: TensorValue | None = None) -> TensorValue:
    """softmax(scores + mask) @ v: scores [B, H, T, S], v [B, H, S, Dh], additive float32 mask
    broadcastable to the scores -> [B, H, T, Dh]."""
    if mask is not None:
        scores = scores + mask
    return ops.matmul(ops.softmax(scores), _widened(v)).cast(v.dtype)


def attention(q: TensorValue, k_t: TensorValue, v: TensorValue, mask: TensorValue | None = None) -> TensorValue:
    return attend(attention_scores(q, k_t), v, mask)


def attention_scores_few_rows(q: TensorValue, k: TensorValue) -> TensorValue:
    """q [B, H, n, Dh], k [B, H, S, Dh] (keys not transposed) -> float32 scaled scores [B, H, n, S].

    For decoder steps (n small, S up to 1500): k @ q^T streams the keys through MAX's
    matrix-vector product, like `linear_few_rows`; only the small [.., S, n] result is transposed.
    One row (a token step): each key's products with q, summed (`_one_row`).
    """
    if _one_row(q):  # a step: a row's products and sum, not a batched matrix product (`_one_row`)
        b, h, s, dh = k.shape
        scores = ops.reshape(ops.sum(_widened(k) * _widened(q), axis=-1), [b, h, 1, s])
    else:
        scores = ops.transpose(ops.matmul(_widened(k), ops.transpose(_widened(q), -1, -2)), -1, -2)
    return (scores * (int(q.shape[-1]) ** -0.5)).cast(DType.float32)


def _one_row(x: TensorValue) -> bool:
    """Whether x [B, H, n, ..] has one query row (n == 1, known when the graph is built). For one
    row, elementwise products summed along the row replace MAX's batched matrix product, which a
    GPU runs as a naive kernel (docs/design.md#where-a-gpus-time-goes)."""
    return _static_one(x.shape[2])


def _static_one(dim) -> bool:
    """Whether a dimension is 1, known when the graph is built."""
    return isinstance(dim, StaticDim) and int(dim) == 1


def attend_few_rows(scores: TensorValue, v_t: TensorValue, mask: TensorValue | None = None) -> TensorValue:
    """softmax(scores + mask) @ v with v stored transposed: scores [B, H, n, S], v_t [B, H, Dh, S]
    -> [B, H, n, Dh], computed as (v_t @ p^T)^T for the reason in `attention_scores_few_rows`."""
    if mask is not None:
        scores = scores + mask
    p = ops.softmax(scores)
    if _one_row(p):
        b, h, dh, s = v_t.shape
        return ops.reshape(ops.sum(_widened(v_t) * p, axis=-1), [b, h, 1, dh]).cast(v_t.dtype)
    return ops.transpose(ops.matmul(_widened(v_t), ops.transpose(p, -1, -2)), -1, -2).cast(v_t.dtype)


def encoder_attention(
    qkv: TensorValue,
    n_head: int,
    tile: tuple[int, int] = MACHINE_TILE,
    bf16: bool = False,
    amx: bool = False,
    int16: bool = False,
) -> TensorValue:
    """`attention` of every head as one CPU kernel (`kernels/encoder_attention.mojo`), straight
    from the fused qkv linear: qkv float32 [B, T, 3d] -> [B, T, d] (heads merged, as
    `merge_heads` gives them); no head split, key transpose or merge ops around it. `tile` as
    `packed_linear`'s. bf16: both products' inputs rounded to bfloat16, `vdpbf16ps`, where the
    kernels compile for AVX512_BF16 (float32 elsewhere); amx: with bf16, the products on AMX tiles
    where the kernels compile for them (the caller has `cpu_features.amx_permitted`); int16 (not with
    bf16): q and the keys quantized to 12 bits, the values and the softmax's weights to 16, `vpmaddwd`."""
    b, t, d3 = qkv.shape
    out = TensorType(DType.float32, [b, t, int(d3) // 3], device=qkv.device)
    parameters = {
        "heads": n_head,
        "tile_rows": tile[0],
        "tile_panels": tile[1],
        "bf16": bf16,
        "amx": amx,
        "int16": int16,
    }
    return ops.custom("encoder_attention", qkv.device, [qkv], [out], parameters=parameters)[0].tensor


def encoder_attention_fits(d: int, n_head: int) -> bool:
    """The kernel's limits: Dh a multiple of 16 up to 128 (64 in every Whisper)."""
    dh = d // n_head
    return dh * n_head == d and dh % 16 == 0 and dh <= 128


def cross_attention(
    q: TensorValue, k: TensorValue, v_t: TensorValue, tile: tuple[int, int] = MACHINE_TILE
) -> TensorValue:
    """A prompt's cross-attention as one CPU kernel (`kernels/cross_attention.mojo`): q, k and v_t
    float32 [B, H, n, Dh], [B, H, T, Dh] and [B, H, Dh, T] -> float32 [B, H, n, Dh]; Dh a multiple
    of 16 up to 128 (`cross_attention_fits`). `tile` as `packed_linear`'s."""
    out = TensorType(DType.float32, q.shape, device=q.device)
    parameters = {"tile_rows": tile[0], "tile_panels": tile[1]}
    return ops.custom("cross_attention", q.device, [q, k, v_t], [out], parameters=parameters)[0].tensor


def cross_attention_fits(head_dim: int) -> bool:
    """The kernel's limits (MAX_DH and the 16-wide panels in encoder_attention.mojo); every Whisper fits."""
    return head_dim % 16 == 0 and head_dim <= 128


def cross_attention_int8(
    q: TensorValue,
    k: TensorValue,
    v_t: TensorValue,
    k_scales: TensorValue,
    v_scales: TensorValue,
    tile: tuple[int, int] = MACHINE_TILE,
    int16: bool = False,
) -> TensorValue:
    """A prompt's cross-attention over int8 keys and values with their scales, as one CPU kernel
    (`kernels/cross_attention.mojo`): q float32 [B, H, n, Dh], k int8 [B, H, T, Dh], v_t int8
    [B, H, Dh, T], k_scales and v_scales float32 [B, H, T] (`decoder.cross_layout`) -> float32
    [B, H, n, Dh]. The keys and values are widened as `decoder.float_cross` widens them, or with
    `int16` (where `cpu_features.int16_attention_pays`) run through `vpmaddwd` as int8's encoder
    attention is; `tile` as `packed_linear`'s."""
    out = TensorType(DType.float32, q.shape, device=q.device)
    return ops.custom(
        "cross_attention_int8",
        q.device,
        [q, k, v_t, k_scales, v_scales],
        [out],
        parameters={"tile_rows": tile[0], "tile_panels": tile[1], "int16": int16},
    )[0].tensor


def few_row_attention(q: TensorValue, k: TensorValue, v_t: TensorValue, limit: TensorValue) -> TensorValue:
    """`attend_few_rows(attention_scores_few_rows(q, k), v_t, mask)` as one CPU kernel
    (`kernels/attention.mojo`), float32 only: q [B, H, n, Dh], k [B, H, S, Dh], v_t [B, H, Dh, S],
    limit int64 [n] (query row i attends keys 0 .. limit[i] - 1, the mask's unmasked prefix)
    -> [B, H, n, Dh]. It reads each key once per query row: for decoder steps, not prompts."""
    out = TensorType(DType.float32, q.shape, device=q.device)
    return ops.custom("few_row_attention", q.device, [q, k, v_t, limit], [out])[0].tensor


def few_row_attention_fits(head_dim: int, max_keys: int) -> bool:
    """The kernel's limits (MAX_KEYS and the SIMD width in attention.mojo); every Whisper fits."""
    return head_dim % 8 == 0 and max_keys <= 2048


def greedy_choice(
    logits: TensorValue, suppress: TensorValue, timestamp_begin: TensorValue, logprob: bool = True
) -> list[TensorValue]:
    """The greedy token after the last of k positions, as `maxwhisper.decoding` picks it at
    temperature 0 (`kernels/greedy.mojo`): logits float32 [B, k, V], suppress float32 [B, V] (0 or
    -inf), timestamp_begin int64 [B] (V: no timestamp rule; negative: no choice, token -1) -> token
    int64 [B], log prob float32 [B]. Without `logprob` the token alone, for drafts (log prob 0)."""
    b = logits.shape[0]
    out = [TensorType(DType.int64, [b], device=logits.device), TensorType(DType.float32, [b], device=logits.device)]
    inputs = [logits, suppress, timestamp_begin]
    parameters = {"with_logprob": logprob}
    return [v.tensor for v in ops.custom("greedy_choice", logits.device, inputs, out, parameters=parameters)]


def greedy_choice_ops(logits: TensorValue, suppress: TensorValue, timestamp_begin: TensorValue) -> list[TensorValue]:
    """`greedy_choice` in MAX's ops, for any device: decoding.py's arithmetic (the differences in
    float32, the exps and their sums in float64), the first index of equal maxima on every device (MAX's
    argmax may pick any on a GPU)."""
    b, _, v = logits.shape
    dev = logits.device
    x = ops.reshape(logits[:, -1, :], [b, v]) + suppress
    index = ops.range(0, int(v), 1, out_dim=v, device=dev, dtype=DType.int64)
    asked = ops.reshape(timestamp_begin, [b, 1])
    skipped = asked < 0
    ts = ops.min(asked, ops.constant(int(v), DType.int64, device=dev))
    neg_inf = ops.constant(-np.inf, DType.float32, device=dev)
    is_ts = ops.greater_equal(ops.unsqueeze(index, 0), ts)  # [b, v]
    text, stamps = ops.where(is_ts, neg_inf, x), ops.where(is_ts, x, neg_inf)
    text_max, ts_max = ops.max(text, axis=-1), ops.max(stamps, axis=-1)  # [b, 1]
    m = ops.max(text_max, ts_max)

    def first_index(values: TensorValue, top: TensorValue) -> TensorValue:
        past_end = ops.constant(int(v), DType.int64, device=dev)
        return ops.min(ops.where(ops.equal(values, top), ops.unsqueeze(index, 0), past_end), axis=-1)

    def log_sum(values: TensorValue, top: TensorValue) -> TensorValue:
        """log(sum(exp(values - top))): the difference in float32, exp and sum in float64, the log
        rounded to float32."""
        return ops.log(ops.sum(ops.exp((values - top).cast(DType.float64)), -1)).cast(DType.float32)

    ls = log_sum(x, m)
    text_arg, ts_arg = first_index(text, text_max), first_index(stamps, ts_max)
    # openai's rule: a timestamp when the timestamps' summed probability beats every text token's
    top = (ts_max - m) - ls
    total = ops.sum(ops.exp((((stamps - m) - ls) - top).cast(DType.float64)), -1)
    timestamp_logprob = ops.log(total).cast(DType.float32) + top
    take_ts = ops.logical_and(ops.logical_and(ts < int(v), ts_max > neg_inf), timestamp_logprob > (text_max - m) - ls)
    chosen = ops.where(take_ts, ts_arg, ops.where(text_max >= ts_max, text_arg, ts_arg))
    # the chosen entry is its region's maximum: its log probability is minus the region's log-sum
    logprob = -ops.where(take_ts, log_sum(stamps, ts_max), ls)
    chosen = ops.where(skipped, ops.constant(-1, DType.int64, device=dev), chosen)
    logprob = ops.where(skipped, ops.constant(0.0, DType.float32, device=dev), logprob)
    return [ops.reshape(chosen, [b]), ops.reshape(logprob, [b])]


def timestamp_rules(
    n_vocab: int,
    last: TensorValue,
    previous: TensorValue,
    last_timestamp: TensorValue,
    timestamp_begin: TensorValue,
    eot: TensorValue,
) -> TensorValue:
    """What `decoding.ApplyTimestampRules.suppress` forbids once a row has sampled a token, in MAX's
    ops: float32 [B, n_vocab], 0 or -inf. It reads of the sampled tokens only the last
    two (last, previous: int64 [B]) and the last timestamp (-1: none); timestamp_begin n_vocab: no rule.
    Timestamps come in pairs, then text; they never decrease; a segment is never empty."""
    dev = last.device
    index = ops.unsqueeze(ops.range(0, n_vocab, 1, out_dim=n_vocab, device=dev, dtype=DType.int64), 0)
    columns = (timestamp_begin, last, previous, last_timestamp, eot)
    ts, last, previous, stamp, eot = (ops.reshape(t, [-1, 1]) for t in columns)
    one = ops.constant(1, DType.int64, device=dev)
    is_timestamp = index >= ts
    last_ts, previous_ts = last >= ts, previous >= ts
    pair_ended = ops.logical_and(last_ts, previous_ts)  # no third timestamp
    pair_open = ops.logical_and(last_ts, ops.logical_not(previous_ts))  # a timestamp or eot closes it
    lowest = ops.where(pair_open, stamp, stamp + one)  # the smallest timestamp allowed next
    earlier = ops.logical_and(stamp >= 0, ops.logical_and(is_timestamp, index < lowest))
    forbidden = ops.logical_or(
        ops.logical_or(ops.logical_and(pair_ended, is_timestamp), ops.logical_and(pair_open, index < eot)), earlier
    )
    zero, neg_inf = (ops.constant(v, DType.float32, device=dev) for v in (0.0, -np.inf))
    return ops.where(forbidden, neg_inf, zero)


def conv_stem_kernel(w: WeightBank, mel: TensorValue) -> TensorValue:
    """The encoder's two GELU convolutions and its positional embedding as one CPU kernel
    (`kernels/conv_stem.mojo`): mel float32 [B, n_mels, frames] -> [B, ceil(frames / 2), d]."""
    b, _, frames = mel.shape
    bias = w("encoder.conv1.bias")
    out = TensorType(DType.float32, [b, (frames + 1) // 2, bias.shape[0]], device=mel.device)
    inputs = [
        mel,
        w.panels("encoder.conv1.weight_rscf"),
        bias,
        w.panels("encoder.conv2.weight_rscf"),
        w("encoder.conv2.bias"),
        w("encoder.positional_embedding"),
    ]
    return ops.custom("conv_stem", mel.device, inputs, [out])[0].tensor


def conv_stem_kernel_fits(d: int) -> bool:
    """The kernel's limit: whole pairs of 16-column panels (every Whisper's width)."""
    return d % 32 == 0


def cross_layout_kernel(kv: TensorValue, layers: int, heads: int, int8: bool) -> list[TensorValue]:
    """Every decoder layer's cross-attention keys and values, projected together as kv float32
    [B, T, layers x 2d], laid out as one CPU kernel (`kernels/cross_layout.mojo`): K [layers, B, H,
    T, Dh] and V^T [layers, B, H, Dh, T]; int8: those in int8 and their scales [layers, B, H, T]."""
    b, t, width = kv.shape
    dh = int(width) // (2 * layers * heads)
    dtype, dev = (DType.int8 if int8 else DType.float32), kv.device
    scales = [layers, b, heads, t] if int8 else [0, 0, 0, 0]
    out = [
        TensorType(dtype, [layers, b, heads, t, dh], device=dev),
        TensorType(dtype, [layers, b, heads, dh, t], device=dev),
        TensorType(DType.float32, scales, device=dev),
        TensorType(DType.float32, scales, device=dev),
    ]
    values = [v.tensor for v in ops.custom("cross_layout", dev, [kv], out)]
    return values if int8 else values[:2]


def cross_int8_kernel(k: TensorValue, v_t: TensorValue) -> list[TensorValue]:
    """float32 cross K [L, B, H, T, Dh] and V^T [L, B, H, Dh, T] (`cross_layout_kernel`'s) in int8
    with their scales [L, B, H, T], as `cross_layout_kernel` quantizes them, one CPU kernel
    (`kernels/cross_layout.mojo`)."""
    scales = TensorType(DType.float32, list(k.shape)[:4], device=k.device)
    out = [TensorType(DType.int8, k.shape, device=k.device), TensorType(DType.int8, v_t.shape, device=k.device)]
    return [v.tensor for v in ops.custom("cross_int8", k.device, [k, v_t], [*out, scales, scales])]


def conv1d(w: WeightBank, prefix: str, x: TensorValue, stride: int) -> TensorValue:
    """Kernel-3, padding-1 Conv1d as one matrix product over the three taps side by side: x
    [B, T, C_in] -> [B, T / stride, C_out]; `{prefix}.weight_rscf` is [1, 3, C_in, C_out]. A GPU
    runs MAX's conv2d op as a naive kernel, far slower than a matrix product
    (docs/design.md#where-a-gpus-time-goes)."""
    b, t, c = x.shape
    weight = w(f"{prefix}.weight_rscf")
    padded = ops.pad(x, [0, 0, 1, 1, 0, 0])
    frames = (t + stride - 1) // stride
    end = dim_value(frames) * stride
    taps = [padded[:, (slice(k, end + k, stride), frames), :] for k in range(3)]
    y = ops.matmul(ops.concat(taps, axis=-1), ops.reshape(weight, [3 * int(c), int(weight.shape[3])]))
    return y + w(f"{prefix}.bias")
