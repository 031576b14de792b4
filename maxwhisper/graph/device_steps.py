"""The portable plan's decoding over buffers that outlive a decoding, so that a step copies to the
device only what changed: the token step graph advances its own tokens and positions
(`decoder.build_token_step_graph`), the suppression mask stays while the logit filters leave it
as it was, and the logits stay on the device unless the decoding asks for them. On a GPU each
batch size and audio length's step is captured once as a device graph and replayed
(`MaxWhisper.run_step`); on the CPU the same buffers run through plain calls, which is how the
tests check them. Why: docs/design.md#the-gpu.

Seams: `DeviceStepInference` is `decoding.ChoosingInference` (the model's `inference()` under the
portable plan); `StepBuffers` are lent by `StepBufferPool`, one decoding at a time.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from max import driver
from max.dtype import DType

from .inputs import TokenStepInputs, cache_shapes, cross_layout
from .model import AudioFeatures, MaxChoosingInference, MaxWhisper, every_row_then_some

logger = logging.getLogger(__name__)
_KEYS = itertools.count(1)  # capture keys, unique in the process


class StepBuffers:
    """The token step graph's inputs for `batch` rows over `audio_ctx` audio positions on the
    model's device, with a host copy of what each holds (`set` copies only a change)."""

    def __init__(self, net: MaxWhisper, batch: int, audio_ctx: int):
        d, dev = net.dims, net.device
        dtype = DType.float16 if net.precision == "fp16" else DType.float32

        def zeros(shape, kind=DType.int64) -> driver.Buffer:
            return driver.Buffer.zeros(shape, kind, device=dev)

        self.inputs = TokenStepInputs(
            tokens=zeros([batch, 1]),
            positions=zeros([batch]),
            cross_keys=zeros([batch]),
            rows=zeros([batch]),
            suppress=zeros([batch, d.n_vocab], DType.float32),
            timestamp_begin=zeros([batch]),
            cross=tuple(zeros(shape, kind) for kind, shape in cross_layout(d, dtype, batch, audio_ctx, False)),
            caches=tuple(zeros(shape, dtype) for _ in range(d.n_text_layer) for shape in cache_shapes(d, batch)),
        )
        self.held: dict[str, np.ndarray | None] = dict.fromkeys(
            ("tokens", "positions", "cross_keys", "rows", "suppress", "timestamp_begin")
        )
        self.key = next(_KEYS)  # its captured step on a GPU
        self.outputs: list[driver.Buffer] | None = None  # the captured step's outputs, rewritten by each replay

    def set(self, name: str, array: np.ndarray) -> bool:
        """Input `name` holds `array`: copied to the device only where it held something else;
        whether it was. The copy runs on the device's queue, from the host copy kept here: wait
        for the device (`driver.Device.synchronize`) before a graph reads it."""
        held = self.held[name]
        if held is not None and np.array_equal(held, array):
            return False
        source = np.array(array, order="C")
        getattr(self.inputs, name).inplace_copy_from(driver.Buffer.from_numpy(source))
        self.held[name] = source  # (once the copy is queued; it also keeps the source alive)
        return True

    def advanced(self, chosen: np.ndarray) -> None:
        """What the step graph wrote, every row asked for: the chosen tokens into the rows that
        stepped, the positions on by one; a row sitting out keeps both."""
        tokens, positions = self.held["tokens"], self.held["positions"]
        stepped = positions >= 0
        if tokens is not None:
            self.held["tokens"] = np.where(stepped[:, None], chosen.reshape(-1, 1), tokens).astype(np.int64)
        self.held["positions"] = np.where(stepped, positions + 1, positions)


class StepBufferPool:
    """Step buffers lent to one decoding at a time, by batch size and audio length; at most
    `keep` idle ones are kept (the oldest go, and their captured steps with them)."""

    def __init__(self, net: MaxWhisper, keep: int = 4):
        self.net, self.keep = net, keep
        self._idle: OrderedDict[tuple[int, int], list[StepBuffers]] = OrderedDict()
        self._lock = threading.Lock()

    def lend(self, batch: int, audio_ctx: int) -> StepBuffers:
        with self._lock:
            idle = self._idle.get((batch, audio_ctx))
            if idle:
                buffers = idle.pop()
                if not idle:
                    del self._idle[batch, audio_ctx]
                return buffers
        return StepBuffers(self.net, batch, audio_ctx)

    def give_back(self, buffers: StepBuffers) -> None:
        shape = (buffers.inputs.tokens.shape[0], buffers.inputs.cross[0].shape[3])
        with self._lock:
            self._idle.setdefault(shape, []).append(buffers)
            self._idle.move_to_end(shape)
            while sum(map(len, self._idle.values())) > self.keep:
                oldest = next(iter(self._idle))
                evicted = self._idle[oldest].pop(0)
                if not self._idle[oldest]:
                    del self._idle[oldest]
                self.net.release(self.net.token_step, evicted.key)  # the pool is whole if this fails


class DeviceStepInference(MaxChoosingInference):
    """`decoding.ChoosingInference` for the portable plan over lent `StepBuffers`: the prompt runs
    the step graph on them, every one-token step the token step graph, all rows at once (rows that
    have ended step on, their results dropped), so that each step has the shapes it was captured with."""

    def __init__(self, model: MaxWhisper):
        super().__init__(model)
        self.buffers: StepBuffers | None = None

    def _setup(self, batch: int, features: AudioFeatures):
        self.buffers = self.model.step_buffers.lend(batch, features.cross[0].shape[3])
        cross = self._cross_for(batch, features)  # kept until the copies from it are done
        with self.model.device_lock:
            for mine, theirs in zip(self.buffers.inputs.cross, cross, strict=True):
                mine.inplace_copy_from(theirs)
            self.model.device.synchronize()
        self.cache, self.cross = self.buffers.inputs.caches, self.buffers.inputs.cross

    def logits_and_choice(
        self,
        tokens: np.ndarray,
        audio_features: AudioFeatures,
        positions: Sequence[int],
        suppress: np.ndarray,
        timestamp_begin: int,
        rows: np.ndarray | None = None,
        logits_wanted: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        if rows is not None:
            return every_row_then_some(
                self.logits_and_choice,
                tokens,
                audio_features,
                positions,
                suppress,
                timestamp_begin,
                rows,
                logits_wanted,
            )
        return super().logits_and_choice(
            tokens, audio_features, positions, suppress, timestamp_begin, logits_wanted=logits_wanted
        )

    def _token_step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        rows: np.ndarray,
        suppress: np.ndarray,
        timestamp_begin: np.ndarray,
    ) -> list[driver.Buffer]:
        net = self.model
        logits, chosen, logprobs = step_on(
            net,
            self.buffers,
            tokens=tokens,
            positions=positions,
            cross_keys=self._cross_keys(len(tokens)),
            rows=rows,
            suppress=suppress,
            timestamp_begin=timestamp_begin,
        )
        return [logits, driver.Buffer.from_numpy(chosen), logprobs]  # the tokens read once

    def cleanup_caching(self) -> None:
        if self.buffers is not None:
            self.model.step_buffers.give_back(self.buffers)
            self.buffers = None
        super().cleanup_caching()


def step_on(net: MaxWhisper, b: StepBuffers, **inputs: np.ndarray) -> tuple[driver.Buffer, np.ndarray, driver.Buffer]:
    """The token step on `b` with `inputs` set (only a change copied): its logits and log
    probabilities on the device, its chosen tokens read, what it wrote recorded (`advanced`).
    Copies, the step and the read hold the device lock together: another thread's capture sees none."""
    with net.device_lock:
        if any([b.set(name, array) for name, array in inputs.items()]):
            net.device.synchronize()
        try:
            logits, chosen, logprobs = run_step(net, b)[:3]
            chosen = net.to_numpy(chosen)
        except BaseException:  # what the step wrote is unknown: the next one copies both again
            b.held["tokens"] = b.held["positions"] = None
            raise
        b.advanced(chosen)
    return logits, chosen, logprobs


def run_step(net: MaxWhisper, b: StepBuffers) -> list[driver.Buffer]:
    """The token step graph on `b`: on a GPU the device graph captured for `b` replayed (captured
    on first use), elsewhere or where capture fails a plain call."""
    if net.captures and b.outputs is None:
        try:
            b.outputs = _capture(net, b)
        except Exception as e:  # noqa: BLE001 - the step still runs, without the captured graph
            net.captures = False
            logger.warning(
                "the GPU runs MAX's decoder steps one by one: capturing them failed (%s: %s)",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    if b.outputs is None:
        return net.run(net.token_step, *b.inputs.flat())
    net.replay(net.token_step, b.key, b.inputs.flat())
    return b.outputs


def _capture(net: MaxWhisper, b: StepBuffers) -> list[driver.Buffer]:
    """`b`'s step captured as a device graph, its outputs. Captured with every row sitting the step
    out, so that a capture that also runs the graph writes nothing a step needs: no cache entry, no
    position; the tokens are set again after it."""
    positions, tokens = b.held["positions"], b.held["tokens"]
    with net.device_lock:
        b.set("positions", np.full_like(positions, -1))
        net.device.synchronize()
        try:
            return net.capture(net.token_step, b.key, b.inputs.flat())
        finally:
            b.held["tokens"] = None
            b.set("positions", positions)
            b.set("tokens", tokens)
            net.device.synchronize()
