"""openai-whisper state dict -> the arrays the MAX graphs take: explicit renames, fusions and
transposes, with a strict check that every parameter is used exactly once."""

from __future__ import annotations

import numpy as np

from ..api import ModelError
from ..checkpoint import ModelDims


def graph_arrays(state: dict[str, np.ndarray], dims: ModelDims) -> dict[str, np.ndarray]:
    """Encoder linear weights become `*.weight_t` [d_in, d_out] (x @ W^T without a transpose in the
    graph); decoder ones keep [d_out, d_in] `*.weight` for `layers.linear_few_rows`; q/k/v are fused
    into `attn.qkv`, and every decoder layer's cross-attention k and v, in layer order, into
    `decoder.cross_kv`, which the encoder graph runs (the key projection has no bias: zeros); conv
    weights [C_out, C_in, 3] become RSCF `*.weight_rscf`."""
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        if name in used:
            raise ModelError(f"parameter {name} used twice")
        used.add(name)
        return state[name]

    def linear(dst: str, *srcs: str, bias: bool = True):
        ws = [take(f"{s}.weight") for s in srcs]
        w = np.concatenate(ws, axis=0)
        if dst.startswith("decoder.") and dst != "decoder.cross_kv":  # cross_kv runs in the encoder graph
            out[f"{dst}.weight"] = w
        else:
            out[f"{dst}.weight_t"] = w.T
        if bias:
            out[f"{dst}.bias"] = np.concatenate(
                [
                    take(f"{s}.bias") if not s.endswith(".key") else np.zeros(w.shape[0], np.float32)
                    for s, w in zip(srcs, ws)
                ]
            )

    def copy(name: str, dst: str | None = None):
        out[dst or name] = take(name)

    def block(p: str, cross: bool):
        linear(f"{p}.attn.qkv", f"{p}.attn.query", f"{p}.attn.key", f"{p}.attn.value")
        linear(f"{p}.attn.out", f"{p}.attn.out")
        if cross:
            linear(f"{p}.cross_attn.query", f"{p}.cross_attn.query")
            linear(f"{p}.cross_attn.out", f"{p}.cross_attn.out")
        for ln in ("attn_ln", "mlp_ln") + (("cross_attn_ln",) if cross else ()):
            copy(f"{p}.{ln}.weight"), copy(f"{p}.{ln}.bias")
        linear(f"{p}.mlp.0", f"{p}.mlp.0")
        linear(f"{p}.mlp.2", f"{p}.mlp.2")

    for conv in ("encoder.conv1", "encoder.conv2"):
        w = take(f"{conv}.weight")  # [C_out, C_in, 3] -> [1, 3, C_in, C_out]
        out[f"{conv}.weight_rscf"] = w.transpose(2, 1, 0)[None]
        copy(f"{conv}.bias")
    copy("encoder.positional_embedding")
    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", cross=False)
    copy("encoder.ln_post.weight"), copy("encoder.ln_post.bias")
    embedding = take("decoder.token_embedding.weight")
    out["decoder.token_embedding.weight"] = embedding  # also the tied output projection
    copy("decoder.positional_embedding")
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", cross=True)
    linear(
        "decoder.cross_kv",
        *(f"decoder.blocks.{i}.cross_attn.{kv}" for i in range(dims.n_text_layer) for kv in ("key", "value")),
    )
    copy("decoder.ln.weight"), copy("decoder.ln.bias")

    if unused := sorted(set(state) - used):
        raise ModelError(f"parameters not used by the MAX graphs: {unused[:5]}")
    return out


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A linear's weight W [d_out, d_in] ~ q x scale per output channel: q int8 in [-127, 127],
    scale float32 [d_out] = max |W[j]| / 127 (1 for an all-zero row), rounded to nearest."""
    amax = np.abs(w).max(axis=1, keepdims=True).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1)


def quantize_int4_groups(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """W [d_out, d_in] ~ q x scale per `group` consecutive weights of a row: q in [-8, 7], returned
    + 8 as uint8 in [0, 15]; scale float32 [d_out, d_in / group] = max |W[j, g]| / 7 (1 for an
    all-zero group), rounded to nearest."""
    n, k = w.shape
    groups = w.reshape(n, k // group, group).astype(np.float32)
    amax = np.abs(groups).max(axis=2, keepdims=True)
    scale = np.where(amax > 0, amax / np.float32(7), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(groups / scale), -8, 7).astype(np.int16) + 8
    return q.reshape(n, k).astype(np.uint8), scale.reshape(n, k // group)


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even, as the CPU's conversions do),
    as the bits of each bfloat16, uint16 (numpy has no bfloat16 type). Finite values only."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def vocab_clusters(
    w: np.ndarray, first_special: int, clusters: int, panel: int, iterations: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output projection's rows W [n_vocab, d] in groups for a drafted run's projection
    (`layers.vocab_draft_int4`): group 0 the rows from `first_special` on (special tokens and
    timestamps), then `clusters` k-means clusters of the text rows, seeded (another machine's BLAS
    may break a near tie otherwise, which moves a draft's speed, never a token). Each group is
    padded to whole panels of `panel` rows, and the whole to `vocab_cluster_panels` panels, so that
    its size depends on W's shape only. -> rows int32 [R], each grouped row's vocabulary row (-1:
    padding); starts int32 [clusters + 2], each group's first panel, then the panels used;
    centroids float32 [clusters + 1, d], group 0's zero."""
    text = np.ascontiguousarray(w[:first_special], dtype=np.float32)
    centroids = text[np.random.default_rng(0).choice(len(text), clusters, replace=False)]  # a copy

    def nearest(c: np.ndarray) -> np.ndarray:  # in blocks of rows: a few MB at a time
        norms = (c * c).sum(1)
        return np.concatenate([(norms - 2 * text[i : i + 4096] @ c.T).argmin(1) for i in range(0, len(text), 4096)])

    def members() -> list[np.ndarray]:  # each cluster's rows, in order, for the centroids now
        owner = nearest(centroids)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(clusters + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(clusters)]

    for _ in range(iterations):
        for c, rows in enumerate(members()):
            if len(rows):  # an empty cluster keeps its centroid
                centroids[c] = text[rows].mean(0)
    groups = [np.arange(first_special, len(w)), *members()]
    padded = [np.pad(g, (0, -len(g) % panel), constant_values=-1) for g in groups]
    starts = np.concatenate([[0], np.cumsum([len(g) // panel for g in padded])])
    rows = np.concatenate(padded)
    rows = np.pad(rows, (0, vocab_cluster_panels(len(w), clusters, panel) * panel - len(rows)), constant_values=-1)
    zero = np.zeros((1, w.shape[1]), np.float32)
    return rows.astype(np.int32), starts.astype(np.int32), np.concatenate([zero, centroids])


def vocab_cluster_panels(n_vocab: int, clusters: int, panel: int) -> int:
    """The panels `vocab_clusters` fills, padding included: each of its groups pads at most one."""
    return -(-n_vocab // panel) + clusters + 1
