"""Transcriptions running in several threads on one MAX model share encoder calls and decoder steps
(`maxwhisper.graph.shared_steps`), and each gets the tokens it gets alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from maxwhisper.api import DecodeOptions
from maxwhisper.audio import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from maxwhisper.transcribe import transcribe


def _mel(audio: np.ndarray) -> np.ndarray:
    return log_mel_spectrogram(audio, 80, padding=N_SAMPLES)


def test_concurrent_transcriptions_share_steps_and_keep_their_tokens(max_tiny_en, jfk_audio, lecture_60s_audio):
    """Five transcriptions at once: greedy with and without a prompt, a window offset by 7 s (its
    sequences are at other positions than the rest), word timestamps (the alignment pass), beam
    search (decoded on its own), checked as `_check_shared_runs_keep_their_tokens` says."""
    jobs = [
        (jfk_audio, DecodeOptions()),
        (lecture_60s_audio, DecodeOptions()),
        (jfk_audio, DecodeOptions(initial_prompt="President Kennedy's inaugural address.")),
        (lecture_60s_audio[7 * SAMPLE_RATE :], DecodeOptions(word_timestamps=True)),
        (jfk_audio, DecodeOptions(beam_size=3)),
    ]
    _check_shared_runs_keep_their_tokens(max_tiny_en.net, jobs)


def test_int8_transcriptions_share_steps_and_keep_their_tokens(max_tiny_en_int8, jfk_audio, lecture_60s_audio):
    """The same in int8, whose shared cache also holds the int8 cross K/V and their scales: greedy
    with and without a prompt, and a window offset by 7 s."""
    jobs = [
        (jfk_audio, DecodeOptions()),
        (lecture_60s_audio, DecodeOptions()),
        (jfk_audio, DecodeOptions(initial_prompt="President Kennedy's inaugural address.")),
        (lecture_60s_audio[7 * SAMPLE_RATE :], DecodeOptions()),
    ]
    _check_shared_runs_keep_their_tokens(max_tiny_en_int8.net, jobs)


def test_portable_transcriptions_share_steps_on_the_device_and_keep_their_tokens(
    max_tiny_en_portable, emulated_device_graphs, jfk_audio, lecture_60s_audio, monkeypatch
):
    """The portable plan (a GPU's graphs) shares steps in a cache of step buffers on the device,
    captured once as a device graph and replayed (emulated here as a GPU does it): greedy with and
    without a prompt, and a window offset by 7 s, each with the tokens it gets alone."""
    from maxwhisper.graph.device_steps import StepBuffers
    from maxwhisper.graph.shared_steps import DeviceRows, SharedSteps

    captured, replays = emulated_device_graphs(max_tiny_en_portable.net)
    jobs = [
        (jfk_audio, DecodeOptions()),
        (lecture_60s_audio, DecodeOptions()),
        (jfk_audio, DecodeOptions(initial_prompt="President Kennedy's inaugural address.")),
        (lecture_60s_audio[7 * SAMPLE_RATE :], DecodeOptions()),
    ]
    copied, joins = [], []
    set_input, join = StepBuffers.set, SharedSteps.join

    def counted_set(self, name, array):
        changed = set_input(self, name, array)
        if changed and self.inputs.tokens.shape[0] == 4:  # the shared cache's buffers
            copied.append(name)
        return changed

    monkeypatch.setattr(StepBuffers, "set", counted_set)
    monkeypatch.setattr(SharedSteps, "join", lambda self, private: joins.append(1) or join(self, private))
    shared = _check_shared_runs_keep_their_tokens(max_tiny_en_portable.net, jobs)
    assert isinstance(shared.steps.store, DeviceRows)
    # the tokens are copied as a decoding joins (and after the capture), not each step: a free row keeps its token
    assert 0 < copied.count("tokens") <= len(joins) + 1 < shared.steps.steps / 10
    key = shared.steps.store.buffers.keys["token_step"]
    assert key in captured  # the shared step: captured once, every step replayed
    assert replays.count(key) == shared.steps.steps


def _check_shared_runs_keep_their_tokens(net, jobs: list[tuple[np.ndarray, DecodeOptions]]):
    """The jobs (audio, options) at once on a SharedModel of 4 rows: each has its tokens and segment
    times from alone; encoder calls were batched, steps carried several sequences, and the shared
    cache is empty afterwards. Returns the SharedModel."""
    from maxwhisper.graph.shared_steps import SharedModel

    shared = SharedModel(net, rows=4)
    mels = [_mel(audio) for audio, _ in jobs]
    alone = [transcribe(net, mel, options) for mel, (_, options) in zip(mels, jobs)]

    together = [None] * len(jobs)
    errors = []

    def run(i):
        try:
            together[i] = transcribe(shared, mels[i], jobs[i][1])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    with net.device_lock:  # the encoder is busy: every transcription's first call waits, and they run together
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(shared.encoder._queue) < len(jobs) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and all(not thread.is_alive() for thread in threads)

    for a, t in zip(alone, together):
        assert [s.tokens for s in t.segments] == [s.tokens for s in a.segments]
        assert [(s.start, s.end) for s in t.segments] == [(s.start, s.end) for s in a.segments]
        assert t.text == a.text
    assert max(shared.encoder.batches) >= 2  # windows of several transcriptions in one encoder call
    assert shared.steps.rows_stepped > shared.steps.steps  # some steps carried several sequences
    assert sorted(shared.steps._free) == [0, 1, 2, 3] and not shared.steps._members
    return shared


def test_more_sequences_than_rows_wait_for_free_rows(max_tiny_en, jfk_audio):
    """Three jfk transcriptions on a shared cache of one row: they take turns in it, all finish,
    each with the tokens of the alone run."""
    from maxwhisper.graph.shared_steps import SharedModel

    shared = SharedModel(max_tiny_en.net, rows=1)
    mel = _mel(jfk_audio)
    expected = transcribe(max_tiny_en.net, mel, DecodeOptions()).segments
    results = [None] * 3

    def run(i):
        results[i] = transcribe(shared, mel, DecodeOptions()).segments

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(r is not None and [s.tokens for s in r] == [s.tokens for s in expected] for r in results)
    assert shared.steps.rows_stepped == shared.steps.steps  # one sequence per step: the cache has one row
    assert shared.steps.decodings_alone >= 1  # the first past its prompt found the cache empty


def test_a_move_into_the_shared_cache_that_fails_gives_its_rows_back(max_tiny_en, jfk_audio, monkeypatch):
    """A decoding whose rows could not be copied into the shared cache fails, and the rows it had
    taken are free again: the next transcription shares them and gets its tokens."""
    from maxwhisper.graph.shared_steps import SharedModel

    shared = SharedModel(max_tiny_en.net, rows=1)
    shared.steps.go_alone = lambda: False  # every decoding moves into the shared cache
    mel = _mel(jfk_audio)
    expected = [s.tokens for s in transcribe(max_tiny_en.net, mel, DecodeOptions()).segments]

    def broken(rows, private):
        raise RuntimeError("out of device memory")

    with monkeypatch.context() as patch:
        patch.setattr(shared.steps.store, "put", broken)
        with pytest.raises(RuntimeError, match="out of device memory"):
            transcribe(shared, mel, DecodeOptions())
    assert shared.steps._free == [0] and not shared.steps._members
    assert [s.tokens for s in transcribe(shared, mel, DecodeOptions()).segments] == expected
    assert shared.steps.steps > 0


def test_a_lone_transcription_steps_on_its_own_rows(max_tiny_en, jfk_audio):
    """One transcription with nothing beside it never touches the shared cache (a lone request
    costs what it costs without sharing), and the next may go alone again."""
    from maxwhisper.graph.shared_steps import SharedModel

    shared = SharedModel(max_tiny_en.net, rows=4)
    mel = _mel(jfk_audio)
    expected = [s.tokens for s in transcribe(max_tiny_en.net, mel, DecodeOptions()).segments]
    for _ in range(2):
        assert [s.tokens for s in transcribe(shared, mel, DecodeOptions()).segments] == expected
    assert (shared.steps.steps, shared.steps.decodings_alone) == (0, 2)


def test_transcriptions_that_decode_together_leave_the_run_graph_out():
    """A model whose transcriptions share steps (a service replica's) steps one token a call, so its
    `compile_rest` readies every other graph but never the token run graph nor the drafts' cross K/V's."""
    from maxwhisper.graph.model import RUN_GRAPHS, graph_names
    from maxwhisper.max_backend import MaxTranscriber

    shared = MaxTranscriber("tiny.en", device="cpu", max_batch=2)
    ready = [name for name, _ in shared.compile_rest()]
    assert set(RUN_GRAPHS) <= set(graph_names(shared.plan)) and not set(RUN_GRAPHS) & set(shared.net.graphs)
    assert set(ready) | set(shared.net.graphs) == set(graph_names(shared.plan)) - set(RUN_GRAPHS)


@pytest.mark.parametrize("precision", ["fp32", "int8", "portable"])
def test_concurrent_streams_share_calls_and_keep_their_tokens(precision, request, jfk_audio, lecture_60s_audio):
    """Three live streams at once on one MaxTranscriber with max_batch 4 (a realtime service replica),
    each pushing 1 s chunks in step with the others: jfk, the lecture, and the lecture from 7 s on,
    starting 3 chunks later (its windows shorter than the others' in the same steps). Each update's
    committed and tentative words and its draft are those of the same stream alone on a model of
    its own (fp32, int8, and the portable plan with its steps captured, whose shared cache is on the
    device and takes a shorter window's cross K/V zero-padded); encoder calls of equal windows ran
    together, steps carried several streams, windows were heard with 5 s of padding (30 s only where
    a hypothesis was held back), and the shared cache is empty afterwards. Two things are arranged
    rather than left to the threads' timing: at one step the third stream encodes first, so the
    others' equal windows queue behind it and run as one call; and no decoding goes alone, so
    decodings that overlap share steps."""
    from maxwhisper.audio import N_FRAMES, STREAM_PADDING_S, heard_frames
    from maxwhisper.max_backend import MaxTranscriber
    from maxwhisper.streaming import Streamer

    fixture = {"fp32": "max_tiny_en", "int8": "max_tiny_en_int8", "portable": "max_tiny_en_portable"}[precision]
    max_tiny_en = request.getfixturevalue(fixture)
    shared = MaxTranscriber(
        "tiny.en",
        device="cpu",
        precision="fp32" if precision == "portable" else precision,
        kernels=precision != "portable",
        max_batch=4,
    )
    if precision == "portable":  # its steps captured and replayed, as a GPU runs them
        request.getfixturevalue("emulated_device_graphs")(shared.net)
    net = shared.decoder_model
    net.steps.go_alone = lambda: False
    clips = [
        np.concatenate([jfk_audio, np.zeros(SAMPLE_RATE, np.float32)]),
        lecture_60s_audio[: 12 * SAMPLE_RATE],
        lecture_60s_audio[7 * SAMPLE_RATE : 16 * SAMPLE_RATE],
    ]
    starts = [0, 0, 3]  # the step at which each stream begins
    steps = max(s + len(c) // SAMPLE_RATE for s, c in zip(starts, clips))
    meet = 5  # the step at which streams 0 and 1 (6 s each) queue behind stream 2's encoder call
    local, third_encodes = threading.local(), threading.Event()
    frames, encode = [], shared.net.encode

    def encode_arranged(mel):
        frames.append(mel.shape[2])
        if getattr(local, "step", None) == meet and local.stream == 2 and not third_encodes.is_set():
            third_encodes.set()
            _until(lambda: len(net.encoder._queue) == 2)
        return encode(mel)

    shared.net.encode = encode_arranged

    def updates(transcriber, i, barrier=None):
        clip, start = clips[i], starts[i]
        streamer, seen = Streamer(transcriber), []
        local.stream = i
        for step in range(steps):
            if barrier is not None:
                barrier.wait(timeout=300)
            local.step = step
            if barrier is not None and step == meet and i < 2:
                assert third_encodes.wait(timeout=300)
            k = step - start
            if 0 <= k < len(clip) // SAMPLE_RATE:
                update = streamer.push(clip[k * SAMPLE_RATE : (k + 1) * SAMPLE_RATE])
                seen.append((update.committed, update.tentative, streamer.draft))
        return seen

    alone = [updates(max_tiny_en, i) for i in range(len(clips))]
    barrier = threading.Barrier(len(clips))
    together, errors = [None] * len(clips), []

    def run(i):
        try:
            together[i] = updates(shared, i, barrier)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    assert not errors and all(not thread.is_alive() for thread in threads)
    for a, t in zip(alone, together):
        assert t == a
    padded = {heard_frames(k * SAMPLE_RATE, STREAM_PADDING_S) for k in range(1, 13)}  # each buffer, 5 s of padding
    assert padded & set(frames) and set(frames) <= padded | {N_FRAMES}  # (30 s: a hypothesis held back, heard again)
    assert max(net.encoder.batches) >= 2  # equal windows of two streams in one encoder call
    assert net.steps.rows_stepped > net.steps.steps  # steps carried several streams
    assert sorted(net.steps._free) == [0, 1, 2, 3] and not net.steps._members


def _until(ready, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


class _PlainEncoder:
    """A SharedEncoder's network on plain arrays: features are the mel itself; the first call holds
    the encoder until `release` is set, so that the others queue; `failing` fails every split."""

    def __init__(self, failing: bool = False):
        self.release, self.failing = threading.Event(), failing

    def encode(self, mel):
        from maxwhisper.graph.model import AudioFeatures

        self.release.wait(30)
        return AudioFeatures(mel.copy(), ())

    def to_device(self, array):
        return array

    def lazy_graph(self, name):
        return name

    def run(self, graph, index, features):
        if self.failing:
            raise RuntimeError("batch_repeat failed")
        return (features[index],)


def _encode_queued(encoder, net, mels) -> tuple[dict, list]:
    """`mels` encoded from a thread each, the first holding the encoder until the others queue in
    order: (features by call, errors)."""
    results, errors = {}, []

    def call(i):
        try:
            results[i] = encoder.encode(mels[i]).features
        except Exception as e:  # noqa: BLE001 - the caller's assertions read them
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(mels))]
    threads[0].start()
    _until(lambda: encoder._running)
    for i in range(1, len(mels)):
        threads[i].start()
        _until(lambda: len(encoder._queue) == i)
    net.release.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


def test_encode_calls_of_another_length_wait_for_a_batch_of_their_own():
    """Calls queued while the encoder runs: the first and those of its length run next as one batch,
    one of another length after them (a stream's shorter window beside 30 s ones), each call
    getting its own windows' features."""
    from maxwhisper.graph.shared_steps import SharedEncoder

    net = _PlainEncoder()
    encoder = SharedEncoder(net, max_windows=4)
    mels = [np.full((1, 80, frames), i, np.float32) for i, frames in enumerate((3000, 3000, 500, 3000))]
    results, errors = _encode_queued(encoder, net, mels)
    assert errors == []
    assert encoder.batches == [1, 2, 1]
    assert all(np.array_equal(results[i], mels[i]) for i in range(4))


def test_a_batch_that_fails_after_its_encoder_call_fails_each_of_its_callers():
    """Splitting a batch's features fails: each caller of that batch gets the failure itself (no
    caller waits on, none sees another error), and the encoder serves the next calls."""
    from maxwhisper.graph.shared_steps import SharedEncoder

    net = _PlainEncoder(failing=True)
    encoder = SharedEncoder(net, max_windows=4)
    mels = [np.full((1, 80, 3000), i, np.float32) for i in range(3)]
    results, errors = _encode_queued(encoder, net, mels)
    assert list(results) == [0]  # the first call ran alone: nothing to split
    assert [str(e) for e in errors] == ["batch_repeat failed"] * 2
    assert encoder.batches == [1, 2]
    assert not encoder._running and encoder._queue == []
    net.failing = False
    assert np.array_equal(encoder.encode(mels[2]).features, mels[2])
