"""Each MAX graph's inputs as one typed record. A record's fields, in order, are the graph's inputs:
the builder takes its input types from a record of types (`types`) and reads its inputs back as a
record (`like`); the caller fills a record with buffers and calls the graph with `flat()`. Nobody
counts positions. A tuple field stands for several inputs (the cross K/V, the caches per layer).

The layouts the decoder graphs share live here too: the self-attention cache (`cache_shapes`) and
the cross-attention tensors the encoder makes (`cross_layout`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from max.dtype import DType
from max.graph import BufferType, DeviceRef, TensorType

from ..checkpoint import ModelDims

T = TypeVar("T")
U = TypeVar("U")


class GraphInputs(Generic[T]):
    """The base of the records below (frozen dataclasses)."""

    def flat(self) -> list[T]:
        """The graph's inputs in order: each field, a tuple field's items in turn."""
        out: list[T] = []
        for f in fields(self):
            value = getattr(self, f.name)
            out.extend(value) if isinstance(value, tuple) else out.append(value)
        return out

    def like(self, values: Iterable[U]) -> GraphInputs[U]:
        """`values` (a graph's inputs, in order) as a record of this one's kind, each tuple field as
        long as this record's."""
        items = iter(values)
        grouped = {
            f.name: tuple(next(items) for _ in getattr(self, f.name))
            if isinstance(getattr(self, f.name), tuple)
            else next(items)
            for f in fields(self)
        }
        if next(items, None) is not None:
            raise ValueError(f"more inputs than {type(self).__name__} holds")
        return type(self)(**grouped)


def cache_shapes(dims: ModelDims, batch) -> list[list]:
    """One layer's self-attention cache: K [batch, H, n_text_ctx, Dh] and V^T [batch, H, Dh, n_text_ctx]."""
    H, dh, S = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    return [[batch, H, S, dh], [batch, H, dh, S]]


def cache_types(dims: ModelDims, dtype: DType, device: DeviceRef, batch="batch") -> tuple[BufferType, ...]:
    """Every layer's cache buffers, layer by layer, K before V^T."""
    return tuple(BufferType(dtype, shape, device=device) for shape in cache_shapes(dims, batch)) * dims.n_text_layer


def cross_layout(dims: ModelDims, dtype: DType, batch, audio_ctx, int8: bool) -> list[tuple[DType, list]]:
    """The cross-attention tensors that the encoder graph outputs after the features and the
    decoder graphs take, as (dtype, shape) in order, each with the layers first and the batch
    second: K [L, batch, H, T, Dh] and V^T [L, batch, H, Dh, T] in `dtype`; int8: K and V^T in int8,
    then the float32 scales of each key and of each value, [L, batch, H, T] each (`encoder.quantized`)."""
    L, H, dh = dims.n_text_layer, dims.n_text_head, dims.n_text_state // dims.n_text_head
    kv = DType.int8 if int8 else dtype
    layout = [(kv, [L, batch, H, audio_ctx, dh]), (kv, [L, batch, H, dh, audio_ctx])]
    return layout + [(DType.float32, [L, batch, H, audio_ctx])] * 2 if int8 else layout


def cross_types(dims: ModelDims, dtype: DType, device: DeviceRef, batch, int8: bool) -> tuple[TensorType, ...]:
    return tuple(
        TensorType(t, shape, device=device) for t, shape in cross_layout(dims, dtype, batch, "audio_ctx", int8)
    )


def _int64(shape: list, device: DeviceRef) -> TensorType:
    return TensorType(DType.int64, shape, device=device)


# the cache's write offset on the host: slice bounds must be there on a GPU
OFFSET_TYPE = TensorType(DType.int64, [], device=DeviceRef.CPU())


@dataclass(frozen=True)
class EncoderInputs(GraphInputs[T]):
    mel: T  # float32 [B, n_mels, frames]

    @staticmethod
    def types(dims: ModelDims, device: DeviceRef) -> EncoderInputs[TensorType]:
        return EncoderInputs(TensorType(DType.float32, ["batch", dims.n_mels, "frames"], device=device))


@dataclass(frozen=True)
class StepInputs(GraphInputs[T]):
    """The step graph's (`decoder.build_decoder_graph`): a prompt, or a step of every row at once."""

    tokens: T  # int64 [B, n], the new tokens
    positions: T  # int64 [n], their absolute positions
    offset: T  # int64 [] on the host: positions[0], where the cache is written
    mask: T  # float32 [n, n_text_ctx]: 0 where a query may attend, -inf elsewhere
    logit_index: T  # int64 [k]: which of the n positions give logits
    suppress: T  # float32 [B, n_vocab]: the greedy choice's suppressed tokens (0 or -inf)
    timestamp_begin: T  # int64 [B]: each row's first timestamp token (n_vocab: none); negative: no choice wanted
    cross: tuple[T, ...]  # `cross_layout`
    caches: tuple[T, ...]  # `cache_types`

    @staticmethod
    def types(dims: ModelDims, dtype: DType, device: DeviceRef, cross_int8: bool) -> StepInputs[TensorType]:
        return StepInputs(
            tokens=_int64(["batch", "n"], device),
            positions=_int64(["n"], device),
            offset=OFFSET_TYPE,
            mask=TensorType(DType.float32, ["n", dims.n_text_ctx], device=device),
            logit_index=_int64(["k"], device),
            suppress=TensorType(DType.float32, ["batch", dims.n_vocab], device=device),
            timestamp_begin=_int64(["batch"], device),
            cross=cross_types(dims, dtype, device, "batch", cross_int8),
            caches=cache_types(dims, dtype, device),
        )


@dataclass(frozen=True)
class TokenStepInputs(GraphInputs[T]):
    """The token step graph's (`decoder.build_token_step_graph`): one new token for each of some rows."""

    tokens: T  # int64 [B, 1]
    positions: T  # int64 [B]: each row's new token's position; -1: the row sits the step out
    cross_keys: T  # int64 [B]: how many of the first audio positions each row attends to
    rows: T  # int64 [k]: the stepping rows whose logits and choice are wanted, ascending
    suppress: T  # float32 [k, n_vocab]
    timestamp_begin: T  # int64 [k], as `StepInputs.timestamp_begin`
    cross: tuple[T, ...]
    caches: tuple[T, ...]

    @staticmethod
    def types(
        dims: ModelDims, dtype: DType, device: DeviceRef, cross_int8: bool, advances: bool = False
    ) -> TokenStepInputs[TensorType | BufferType]:
        """advances: the tokens and positions are buffers that the graph sets for the next step
        (the chosen tokens, the positions after), so that steps in a row copy nothing to the device."""
        int64 = BufferType if advances else TensorType
        return TokenStepInputs(
            tokens=int64(DType.int64, ["batch", 1], device=device),
            positions=int64(DType.int64, ["batch"], device=device),
            cross_keys=_int64(["batch"], device),
            rows=_int64(["rows"], device),
            suppress=TensorType(DType.float32, ["rows", dims.n_vocab], device=device),
            timestamp_begin=_int64(["rows"], device),
            cross=cross_types(dims, dtype, device, "batch", cross_int8),
            caches=cache_types(dims, dtype, device),
        )


@dataclass(frozen=True)
class TokenRunInputs(GraphInputs[T]):
    """The token run graph's (`decoder.build_token_run_graph`): several greedy steps of every row.
    The first four are buffers that the graph leaves set for the next call."""

    tokens: T  # int64 [B, 1]: each row's last token, not in the cache yet
    positions: T  # int64 [B]: its position; -1: the row sits the call out
    previous: T  # int64 [B]: the token before it (a timestamp where the row has sampled one token only)
    last_timestamp: T  # int64 [B]: the row's last sampled timestamp token; -1: none yet
    cross_keys: T  # int64 [B], as `TokenStepInputs.cross_keys`
    suppress: T  # float32 [B, n_vocab]: what the logit filters suppress at every step (0 or -inf)
    timestamp_begin: T  # int64 [B]: the first timestamp token; n_vocab: no timestamp rules
    eot: T  # int64 [B]: the end of text, the first token past the text tokens
    cross: tuple[T, ...]
    caches: tuple[T, ...]
    # where the float32 plan drafts its runs: the cross K/V in int8 that the drafts read (`DraftCrossInputs`)
    draft_cross: tuple[T, ...] = ()

    @staticmethod
    def types(
        dims: ModelDims, dtype: DType, device: DeviceRef, cross_int8: bool, drafts: bool = False
    ) -> TokenRunInputs[TensorType | BufferType]:
        def state(shape: list) -> BufferType:
            return BufferType(DType.int64, shape, device=device)

        return TokenRunInputs(
            tokens=state(["batch", 1]),
            positions=state(["batch"]),
            previous=state(["batch"]),
            last_timestamp=state(["batch"]),
            cross_keys=_int64(["batch"], device),
            suppress=TensorType(DType.float32, ["batch", dims.n_vocab], device=device),
            timestamp_begin=_int64(["batch"], device),
            eot=_int64(["batch"], device),
            cross=cross_types(dims, dtype, device, "batch", cross_int8),
            caches=cache_types(dims, dtype, device),
            draft_cross=cross_types(dims, dtype, device, "batch", True) if drafts else (),
        )


@dataclass(frozen=True)
class DraftCrossInputs(GraphInputs[T]):
    """The draft cross graph's (`decoder.build_draft_cross_graph`): float32 cross K/V to copy in int8."""

    cross: tuple[T, ...]  # K [L, B, H, T, Dh] and V^T [L, B, H, Dh, T], float32

    @staticmethod
    def types(dims: ModelDims, device: DeviceRef) -> DraftCrossInputs[TensorType]:
        return DraftCrossInputs(cross_types(dims, DType.float32, device, "batch", False))


@dataclass(frozen=True)
class AlignmentInputs(GraphInputs[T]):
    tokens: T  # int64 [1, n], the whole sequence
    mask: T  # float32 [n, n], causal
    cross: tuple[T, ...]  # one window's

    @staticmethod
    def types(dims: ModelDims, dtype: DType, device: DeviceRef, cross_int8: bool) -> AlignmentInputs[TensorType]:
        return AlignmentInputs(
            _int64([1, "n"], device),
            TensorType(DType.float32, ["n", "n"], device=device),
            cross_types(dims, dtype, device, 1, cross_int8),
        )


@dataclass(frozen=True)
class CacheReorderInputs(GraphInputs[T]):
    source_indices: T  # int64 [B]: row i becomes row source_indices[i]
    caches: tuple[T, ...]

    @staticmethod
    def types(dims: ModelDims, dtype: DType, device: DeviceRef) -> CacheReorderInputs[TensorType]:
        return CacheReorderInputs(_int64(["batch"], device), cache_types(dims, dtype, device))


@dataclass(frozen=True)
class BatchRepeatInputs(GraphInputs[T]):
    audio_index: T  # int64 [B]: the window of each output row
    features: T  # float32 [n_audio, T, d], as the encoder gives them in every precision
    cross: tuple[T, ...]

    @staticmethod
    def types(dims: ModelDims, dtype: DType, device: DeviceRef, cross_int8: bool) -> BatchRepeatInputs[TensorType]:
        return BatchRepeatInputs(
            _int64(["batch"], device),
            TensorType(DType.float32, ["n_audio", "audio_ctx", dims.n_audio_state], device=device),
            cross_types(dims, dtype, device, "n_audio", cross_int8),
        )
