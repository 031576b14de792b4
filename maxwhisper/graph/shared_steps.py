"""Concurrent transcriptions on one MAX model decode together: each runs in a thread of its own
through the unchanged seek loop, on a `SharedModel` in place of the network. Encoder calls that
arrive while the encoder runs go as one batch per length; greedy decodings at temperature 0 step
in one call of the token step graph over a shared KV cache, each row at its own position. A lone
decoding stays on its own rows, and a row's arithmetic is the one-row path's, so a transcription's
tokens do not depend on what it shared with. The rules: docs/design.md#decoding-requests-together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from max import driver
from max.dtype import DType

from .device_steps import StepBuffers, step_on
from .inputs import TokenStepInputs, cache_shapes, cross_layout
from .model import AudioFeatures, MaxChoosingInference, MaxWhisper, every_row_then_some


class SharedEncoder:
    """Encoder calls from several threads: the calls that arrive while the encoder runs are run
    next, those of the first one's length together, at most `max_windows` windows at a time."""

    def __init__(self, net: MaxWhisper, max_windows: int):
        self.net, self.max_windows = net, max_windows
        self._cond = threading.Condition()
        self._queue: list[_EncodeJob] = []
        self._running = False
        self.batches: list[int] = []  # windows per encoder call, for tests and the benchmark

    def encode(self, mel: np.ndarray) -> AudioFeatures:
        job = _EncodeJob(mel)
        with self._cond:
            self._queue.append(job)
            while not job.done and (self._running or self._queue[0] is not job):
                self._cond.wait()
            if job.done:
                return job.result()
            batch, total = [], 0
            for other in list(self._queue):  # the first job, and those after it of its length that fit
                if not batch or (other.mel.shape[2] == job.mel.shape[2] and total + len(other.mel) <= self.max_windows):
                    batch.append(other)
                    self._queue.remove(other)
                    total += len(other.mel)
            self._running = True
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
        return job.result()

    def _run(self, batch: list[_EncodeJob]) -> None:
        """Encodes `batch` as one call and hands each job its windows' features; where anything
        fails, every job not yet served gets that failure (a job left undone would wait forever)."""
        try:
            features = self.net.encode(np.concatenate([job.mel for job in batch]))
            self.batches.append(sum(len(job.mel) for job in batch))
            if len(batch) == 1:
                batch[0].features, batch[0].done = features, True
                return
            first = 0
            for job in batch:
                index = self.net.to_device(np.arange(first, first + len(job.mel), dtype=np.int64))
                repeated, *cross = self.net.run(
                    self.net.lazy_graph("batch_repeat"), index, features.features, *features.cross
                )
                job.features = AudioFeatures(repeated, tuple(cross))
                job.done = True
                first += len(job.mel)
        except BaseException as e:  # noqa: BLE001 - each caller sees the failure of the call it took part in
            for job in batch:
                if not job.done:
                    job.error, job.done = e, True


@dataclass(eq=False)  # the queue removes jobs by identity: their mels do not compare
class _EncodeJob:
    mel: np.ndarray
    done: bool = False
    features: AudioFeatures | None = None
    error: BaseException | None = None

    def result(self) -> AudioFeatures:
        if self.error is not None:
            raise self.error
        return self.features


@dataclass(eq=False)
class _Member:
    """A decoding's rows in the shared cache, and its submission for the next step."""

    rows: list[int]
    cached: int  # tokens each row holds in the cache
    keys: int  # the audio positions its window has, the first of the cache's cross K/V
    request: tuple | None = None  # (last tokens [b], suppress [b, V], timestamp_begin, logits wanted)
    result: tuple | None = None  # (logits [b, 1, V] or None, tokens [b], log probabilities [b])
    error: BaseException | None = field(default=None, repr=False)


class HostRows:
    """The CPU kernels' shared cache: host memory, rows copied in with numpy; a step runs the token
    step graph for the stepping rows only."""

    def __init__(self, net: MaxWhisper, rows: int):
        d = net.dims
        layout = [(DType.float32, shape) for _ in range(d.n_text_layer) for shape in cache_shapes(d, rows)]
        cross = cross_layout(d, DType.float32, rows, d.n_audio_ctx, net.plan.cross_int8)
        self.net, self._n_cross = net, len(cross)
        self._buffers = [
            driver.Buffer(shape=shape, dtype=dtype, device=driver.CPU()) for dtype, shape in layout + cross
        ]
        self._views = [b.to_numpy() for b in self._buffers]  # the same memory: rows are copied in with numpy
        for view in self._views:
            view.fill(0)

    def put(self, rows: list[int], private: MaxChoosingInference) -> None:
        """The private decoding's caches and cross K/V into `rows`."""
        n = self._n_cross
        sources = [c.to_numpy() for c in private.cache] + [x.to_numpy() for x in private.cross]
        for source, view in zip(sources[:-n], self._views[:-n]):  # the caches [rows, ...]
            view[rows] = source
        for source, view in zip(sources[-n:], self._views[-n:]):  # cross K/V (and scales) [L, rows, ...]
            view[(slice(None), rows, *(slice(0, size) for size in source.shape[2:]))] = source

    def step(
        self, tokens, positions, keys, rows, suppress, timestamp_begin, logits_wanted: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One call for `rows` (ascending; the others sit at position -1): their logits, tokens and
        log probabilities, in that order."""
        net, n = self.net, self._n_cross
        inputs = TokenStepInputs(
            tokens,
            positions,
            keys,
            rows,
            suppress,
            timestamp_begin,
            cross=tuple(self._buffers[-n:]),
            caches=tuple(self._buffers[:-n]),
        )
        flat = (a if isinstance(a, driver.Buffer) else net.to_device(a) for a in inputs.flat())
        return tuple(o.to_numpy() for o in net.run(net.token_step, *flat)[:3])

    def close(self) -> None:
        """Nothing beyond host memory to free: the CPU captures no graph."""


class DeviceRows:
    """The portable plan's shared cache: step buffers on the model's device (`device_steps`) for
    every row and 30 s of audio positions. A step runs every row, those sitting out at position -1,
    so that a GPU captures it once and replays it; only the stepping rows' results are read."""

    def __init__(self, net: MaxWhisper, rows: int):
        self.net, self.capacity = net, rows
        self.buffers = StepBuffers(net, rows, net.dims.n_audio_ctx)

    def put(self, rows: list[int], private: MaxChoosingInference) -> None:
        """The private decoding's caches and cross K/V into `rows`, a contiguous slab at a time: on
        the device, or through the host with zeros after the audio positions of a shorter window."""
        net, b = self.net, self.buffers.inputs
        with net.device_lock:
            net.device.synchronize()  # the step graph rewrites every row of the cache: its writes land first
            for mine, theirs in zip(b.caches, private.cache, strict=True):  # [rows, H, ...]
                for i, row in enumerate(rows):
                    _part(mine, row).inplace_copy_from(_part(theirs, i))
            padded = [self._padded(mine, theirs) for mine, theirs in zip(b.cross, private.cross, strict=True)]
            for mine, theirs in zip(b.cross, padded):  # [L, rows, H, ...]
                for layer in range(mine.shape[0]):
                    for i, row in enumerate(rows):
                        _part(mine, layer, row).inplace_copy_from(_part(theirs, layer, i))
            net.device.synchronize()  # the copies are queued: done before their sources go

    def _padded(self, mine: driver.Buffer, theirs: driver.Buffer) -> driver.Buffer:
        """`theirs` as it is where its audio positions fill `mine`'s, else through the host, zero-padded."""
        if list(theirs.shape[2:]) == list(mine.shape[2:]):
            return theirs
        source = self.net.to_numpy(theirs)
        padded = np.zeros((*source.shape[:2], *mine.shape[2:]), source.dtype)
        padded[tuple(slice(0, size) for size in source.shape)] = source
        return driver.Buffer.from_numpy(padded)

    def step(
        self, tokens, positions, keys, rows, suppress, timestamp_begin, logits_wanted: bool
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """As `HostRows.step`, the logits copied to the host only where wanted. A row sitting out
        keeps the inputs it held, so that only a change is copied."""
        net = self.net
        with net.device_lock:  # the step and its reads together
            logits, chosen, logprobs = step_on(
                net,
                self.buffers,
                tokens=self._held_but(rows, "tokens", tokens[rows]),
                positions=positions,
                cross_keys=self._held_but(rows, "cross_keys", keys[rows]),
                rows=np.arange(self.capacity, dtype=np.int64),
                suppress=self._held_but(rows, "suppress", suppress),
                timestamp_begin=self._held_but(rows, "timestamp_begin", timestamp_begin),
            )
            logprobs = net.to_numpy(logprobs)
            logits = net.to_numpy(logits)[rows] if logits_wanted else None
        return logits, chosen[rows], logprobs[rows]

    def close(self) -> None:
        """The captured step (a GPU's) and its memory freed."""
        self.net.release(self.net.token_step, self.buffers.keys["token_step"])

    def _held_but(self, rows: np.ndarray, name: str, values: np.ndarray) -> np.ndarray:
        """Input `name` for every row: `values` in `rows`, what it held (at first zeros) elsewhere."""
        held = self.buffers.held[name]
        inputs = getattr(self.buffers.inputs, name)
        full = np.zeros(inputs.shape, values.dtype) if held is None else held.copy()
        full[rows] = values
        return full


def _part(buffer: driver.Buffer, *index: int) -> driver.Buffer:
    """buffer[index], a contiguous view: the leading axes fixed, the rest whole."""
    return buffer[(*index, *[slice(None)] * (buffer.rank - len(index)))]


class SharedSteps:
    """A KV cache of `rows` rows shared by the greedy decodings of several threads, stepped
    together: a step runs once every decoding in it has handed in its next token (the last to
    hand in, or to leave, runs it), so each call serves all of them. Its cross K/V hold 30 s of
    audio positions per row; a shorter window fills the first of them. The cache lives where the
    plan's token step reads it: `HostRows` for the CPU kernels, `DeviceRows` for the portable plan."""

    def __init__(self, net: MaxWhisper, rows: int):
        if net.token_step is None:
            raise ValueError("shared steps need a token step graph")
        self.net, self.capacity = net, rows
        self.store = HostRows(net, rows) if net.plan.step_kernels else DeviceRows(net, rows)
        self._cond = threading.Condition()
        self._free = list(range(rows))
        self._members: list[_Member] = []
        self._alone = False  # a decoding steps on its own rows (see go_alone)
        self.steps = 0  # calls of the token step graph, for tests and the benchmark
        self.rows_stepped = 0
        self.decodings_alone = 0

    def go_alone(self) -> bool:
        """Whether a decoding whose prompt has run may go on stepping on its own rows: true, and
        then its own until `done_alone`, when no decoding steps in the shared cache or alone."""
        with self._cond:
            if self._members or self._alone:
                return False
            self._alone = True
            self.decodings_alone += 1
            return True

    def done_alone(self) -> None:
        with self._cond:
            self._alone = False

    def join(self, private: MaxChoosingInference) -> _Member | None:
        """Move a decoding's rows (its cache after the prompt, its cross K/V) into the shared
        cache, waiting for free rows; None when it has more rows than the cache."""
        b = private.cache[0].shape[0]
        if b > self.capacity:
            return None
        with self._cond:
            self._cond.wait_for(lambda: len(self._free) >= b)
            rows, self._free = self._free[:b], self._free[b:]
            try:
                self.store.put(rows, private)
            except BaseException:
                self._free += rows
                self._cond.notify_all()
                raise
            member = _Member(rows, private.cached, private.cross[0].shape[3])
            self._members.append(member)
        return member

    def step(
        self,
        member: _Member,
        tokens: np.ndarray,
        suppress: np.ndarray,
        timestamp_begin: int,
        logits_wanted: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """The member's next tokens: tokens int64 [b, n] (n = member.cached + 1), suppress float32
        [b, n_vocab] -> (logits float32 [b, 1, n_vocab] or None where not wanted, tokens int64 [b],
        log probabilities [b])."""
        if tokens.shape != (len(member.rows), member.cached + 1):
            raise ValueError("a shared step takes one new token per row after those in the cache")
        with self._cond:
            member.request = (tokens[:, -1], suppress, timestamp_begin, logits_wanted)
            self._step_when_all_in()
            self._cond.wait_for(lambda: member.result is not None or member.error is not None)
            result, error, member.result, member.error = member.result, member.error, None, None
        if error is not None:
            raise error
        member.cached += 1
        return result

    def leave(self, member: _Member) -> None:
        with self._cond:
            self._members.remove(member)
            self._free += member.rows
            self._cond.notify_all()
            self._step_when_all_in()

    def _step_when_all_in(self) -> None:
        """Under the lock: one call for every member once each has handed in its token."""
        if not self._members or any(m.request is None for m in self._members):
            return
        members = list(self._members)
        positions = np.full(self.capacity, -1, np.int64)
        keys = np.ones(self.capacity, np.int64)  # (unread for rows sitting the step out)
        tokens = np.zeros((self.capacity, 1), np.int64)
        for m in members:
            positions[m.rows] = m.cached
            keys[m.rows] = m.keys
            tokens[m.rows, 0] = m.request[0]
        rows = np.concatenate([m.rows for m in members]).astype(np.int64)
        order = np.argsort(rows, kind="stable")  # the graph returns the rows in the order asked
        suppress = np.concatenate([m.request[1] for m in members])[order]
        timestamp_begin = np.concatenate([[m.request[2]] * len(m.rows) for m in members]).astype(np.int64)[order]
        try:
            logits, chosen, logprobs = self.store.step(
                tokens, positions, keys, rows[order], suppress, timestamp_begin, any(m.request[3] for m in members)
            )
        except BaseException as e:  # noqa: BLE001 - every member of the step sees it
            for m in members:
                m.request, m.error = None, e
            self._cond.notify_all()
            return
        self.steps += 1
        self.rows_stepped += len(rows)
        where = np.empty_like(order)
        where[order] = np.arange(len(order))  # position of each member row in the sorted output
        first = 0
        for m in members:
            mine = where[first : first + len(m.rows)]
            mine_logits = logits[mine] if m.request[3] else None
            m.result, m.request = (mine_logits, chosen[mine], logprobs[mine]), None
            first += len(m.rows)
        self._cond.notify_all()


class SharedInference:
    """`decoding.ChoosingInference` for one decoding on a SharedModel: the prompt (or a stream's prompt
    and draft, `rewind`) on a private inference, then greedy steps in the shared cache; everything
    else private."""

    def __init__(self, net: MaxWhisper, steps: SharedSteps | None):
        self.private = net.inference()
        self.steps = steps
        self.member: _Member | None = None
        self.alone = False
        self.placed = False  # whether it has joined the shared cache or gone alone (`_place`)

    def logits(self, tokens: np.ndarray, audio_features: AudioFeatures, positions: Sequence[int] = (-1,)) -> np.ndarray:
        return self.private.logits(tokens, audio_features, positions)

    def logits_and_choice(
        self, tokens, audio_features, positions, suppress, timestamp_begin, rows=None, logits_wanted=True
    ):
        if rows is not None:  # rows that have ended step on here (a shared step's member keeps its rows)
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
        if not self.placed and self.private.cache is not None:  # a draft's check ran: its steps follow
            self._place()
        if self.member is not None:
            return self.steps.step(self.member, tokens, suppress, timestamp_begin, logits_wanted)
        out = self.private.logits_and_choice(
            tokens, audio_features, positions, suppress, timestamp_begin, logits_wanted=logits_wanted
        )
        if not self.placed:  # the prompt ran
            self._place()
        return out

    def _place(self) -> None:
        """Past the prompt: into the shared cache, or on its own rows when none steps there (`go_alone`)."""
        self.placed = True
        if self.steps is None:
            return
        self.alone = self.steps.go_alone()
        self.member = None if self.alone else self.steps.join(self.private)
        if self.member is not None:
            self.private.cleanup_caching()

    def rewind(self, n: int) -> None:
        """After a draft's check, on the private cache (`decoding.RewindingInference`)."""
        self.private.rewind(n)

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        self.private.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        if self.member is not None:
            self.steps.leave(self.member)
            self.member = None
        if self.alone:
            self.steps.done_alone()
            self.alone = False
        self.placed = False
        self.private.cleanup_caching()


class SharedModel:
    """`decoding.WhisperModel` over a MaxWhisper for transcriptions running in several threads at
    once: their encoder calls and greedy steps are shared (see the module's docstring), at most
    `rows` windows in an encoder call and `rows` sequences in a step."""

    def __init__(self, net: MaxWhisper, rows: int):
        self.net = net
        self.dims, self.is_multilingual, self.num_languages = net.dims, net.is_multilingual, net.num_languages
        self.alignment_heads = net.alignment_heads
        self.encoder = SharedEncoder(net, rows)
        self.steps = SharedSteps(net, rows) if net.token_step is not None else None

    def encode(self, mel: np.ndarray) -> AudioFeatures:
        return self.encoder.encode(mel)

    def inference(self):
        return SharedInference(self.net, self.steps) if self.steps is not None else self.net.inference()

    def alignment(self, tokens: np.ndarray, features: AudioFeatures) -> tuple[np.ndarray, np.ndarray]:
        return self.net.alignment(tokens, features)

    def close(self) -> None:
        """What the shared steps hold on the device beyond their buffers (a GPU's captured step) freed."""
        if self.steps is not None:
            self.steps.store.close()
