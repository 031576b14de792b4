"""The portable plan's decoding over buffers that outlive a decoding, so that a step copies to the
device only what changed: the token step and token run graphs advance their own tokens and positions
(`decoder.build_token_step_graph`, `decoder.build_token_run_graph`), the suppression mask stays while
the logit filters leave it as it was, and the logits stay on the device unless the decoding asks for
them. On a GPU each batch size and audio length's step and run are captured once as device graphs
and replayed (`run_graph`); on the CPU the same buffers run through plain calls, which is how the
tests check them. Why: docs/design.md#the-gpu.

Seams: `DeviceStepInference` is `decoding.ChoosingInference` (the model's `inference()` under the
portable plan); `StepBuffers` are lent by `StepBufferPool`, one decoding at a time.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import fields

import numpy as np
from max import driver
from max.dtype import DType

from .inputs import TokenRunInputs, TokenStepInputs, cache_shapes, cross_layout
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
        i = self.inputs
        self.run_inputs = TokenRunInputs(  # the token run graph's: the same buffers, and its rules' state
            tokens=i.tokens,
            positions=i.positions,
            previous=zeros([batch]),
            last_timestamp=zeros([batch]),
            cross_keys=i.cross_keys,
            suppress=i.suppress,
            timestamp_begin=i.timestamp_begin,
            eot=zeros([batch]),
            cross=i.cross,
            caches=i.caches,
        )
        self.held: dict[str, np.ndarray | None] = {
            f.name: None for f in fields(self.run_inputs) + fields(self.inputs) if f.name not in _COPIED_ONCE
        }
        self.keys = {name: next(_KEYS) for name in ("token_step", "token_run")}  # their captured graphs on a GPU
        self.outputs: dict[str, list[driver.Buffer]] = {}  # a captured graph's outputs, rewritten by each replay

    def set(self, name: str, array: np.ndarray) -> bool:
        """Input `name` holds `array`: copied to the device only where it held something else;
        whether it was. The copy runs on the device's queue, from the host copy kept here: wait
        for the device (`driver.Device.synchronize`) before a graph reads it."""
        held = self.held[name]
        if held is not None and np.array_equal(held, array):
            return False
        source = np.array(array, order="C")
        getattr(self.run_inputs if name in _RUN_STATE else self.inputs, name).inplace_copy_from(
            driver.Buffer.from_numpy(source)
        )
        self.held[name] = source  # (once the copy is queued; it also keeps the source alive)
        return True

    def forget_state(self) -> None:
        """What the graphs wrote is unknown (a call failed): the next call copies it again."""
        for name in ("tokens", "positions", *_RUN_STATE):
            self.held[name] = None

    def advanced(self, chosen: np.ndarray) -> None:
        """What the step graph wrote, every row asked for: the chosen tokens into the rows that
        stepped, the positions on by one; a row sitting out keeps both."""
        tokens, positions = self.held["tokens"], self.held["positions"]
        stepped = positions >= 0
        if tokens is not None:
            self.held["tokens"] = np.where(stepped[:, None], chosen.reshape(-1, 1), tokens).astype(np.int64)
        self.held["positions"] = np.where(stepped, positions + 1, positions)

    def ran(self, chosen: np.ndarray) -> None:
        """What the run graph wrote, chosen [B, K]: each stepping row's last two tokens, its last
        timestamp, its position on by K; a row sitting out keeps all four."""
        h = self.held  # every input was set for the run
        stepped = h["positions"] >= 0
        last_timestamp = h["last_timestamp"].copy()
        for row in np.flatnonzero(stepped):
            stamps = chosen[row][chosen[row] >= h["timestamp_begin"][row]]
            last_timestamp[row] = stamps[-1] if stamps.size else last_timestamp[row]
        before_last = np.concatenate([h["tokens"], chosen], axis=1)[:, -2]
        h["previous"] = np.where(stepped, before_last, h["previous"])
        h["last_timestamp"] = last_timestamp
        h["tokens"] = np.where(stepped[:, None], chosen[:, -1:], h["tokens"])
        h["positions"] = np.where(stepped, h["positions"] + chosen.shape[1], h["positions"])


_RUN_STATE = ("previous", "last_timestamp", "eot")  # inputs of the token run graph alone
# the cross K/V copied in by `_setup`, the caches written by the graphs; the portable plan's runs
# have no draft cross K/V (the CPU's fp32 plan's drafts alone read them)
_COPIED_ONCE = ("cross", "caches", "draft_cross")


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
                for name, key in evicted.keys.items():  # the pool is whole if this fails
                    if name in self.net.graphs:
                        self.net.release(self.net.graphs[name], key)


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

    def _run(self, inputs: TokenRunInputs) -> tuple[np.ndarray, np.ndarray]:
        given = {f.name: getattr(inputs, f.name) for f in fields(inputs) if f.name not in _COPIED_ONCE}
        return run_on(self.model, self.buffers, **given)

    def cleanup_caching(self) -> None:
        if self.buffers is not None:
            self.model.step_buffers.give_back(self.buffers)
            self.buffers = None
        super().cleanup_caching()


def step_on(net: MaxWhisper, b: StepBuffers, **inputs: np.ndarray) -> tuple[driver.Buffer, np.ndarray, driver.Buffer]:
    """The token step on `b` with `inputs` set (only a change copied): its logits and log
    probabilities on the device, its chosen tokens read, what it wrote recorded (`advanced`)."""
    logits, chosen, logprobs = _call_on(net, b, "token_step", inputs, (1,), b.advanced)
    return logits, chosen, logprobs


def run_on(net: MaxWhisper, b: StepBuffers, **inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The token run on `b` with `inputs` set (only a change copied): its tokens and log
    probabilities read, what it wrote recorded (`ran`)."""
    chosen, logprobs = _call_on(net, b, "token_run", inputs, (0, 1), b.ran)
    return chosen, logprobs


def _call_on(
    net: MaxWhisper,
    b: StepBuffers,
    name: str,
    inputs: dict[str, np.ndarray],
    read: tuple[int, ...],
    record: Callable[[np.ndarray], None],
) -> list:
    """Graph `name` on `b` with `inputs` set: its outputs, those at `read` copied to the host, the
    first of them (the chosen tokens) handed to `record`. Copies, the call and the read hold the
    device lock together: another thread's capture sees none."""
    with net.device_lock:
        if any([b.set(key, array) for key, array in inputs.items()]):
            net.device.synchronize()
        try:
            outputs = list(run_graph(net, b, name))
            for i in read:
                outputs[i] = net.to_numpy(outputs[i])
        except BaseException:  # what the graph wrote is unknown: the next call copies it again
            b.forget_state()
            raise
        record(outputs[read[0]])
    return outputs


def run_graph(net: MaxWhisper, b: StepBuffers, name: str) -> list[driver.Buffer]:
    """The token step or run graph on `b`: on a GPU the device graph captured for `b` replayed
    (captured on first use), elsewhere or where capture fails a plain call."""
    graph = net.token_step if name == "token_step" else net.lazy_graph(name)
    inputs = (b.inputs if name == "token_step" else b.run_inputs).flat()
    if net.captures and name not in b.outputs:
        try:
            b.outputs[name] = _capture(net, b, graph, name, inputs)
        except Exception as e:  # noqa: BLE001 - the step still runs, without the captured graph
            net.captures = False
            logger.warning(
                "the GPU runs MAX's decoder steps one by one: capturing them failed (%s: %s)",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    if name not in b.outputs:
        return net.run(graph, *inputs)
    net.replay(graph, b.keys[name], inputs)
    return b.outputs[name]


def _capture(net: MaxWhisper, b: StepBuffers, graph, name: str, inputs: list[driver.Buffer]) -> list[driver.Buffer]:
    """Graph `name` on `b` captured as a device graph, its outputs. Captured with every row sitting
    the call out, so that a capture that also runs the graph writes nothing a step needs: no cache
    entry, no position, no token; the tokens are set again after it."""
    positions, tokens = b.held["positions"], b.held["tokens"]
    with net.device_lock:
        b.set("positions", np.full_like(positions, -1))
        net.device.synchronize()
        try:
            return net.capture(graph, b.keys[name], inputs)
        finally:
            b.held["tokens"] = None
            b.set("positions", positions)
            b.set("tokens", tokens)
            net.device.synchronize()
