"""Transcriptions running in several threads on one MAX model share encoder calls and decoder steps
(`maxwhisper.graph.shared_steps`), and each gets the tokens it gets alone."""
from __future__ import annotations

import threading
import time

import numpy as np

from maxwhisper.api import DecodeOptions
from maxwhisper.audio import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from maxwhisper.transcribe import transcribe


def _mel(audio: np.ndarray) -> np.ndarray:
    return log_mel_spectrogram(audio, 80, padding=N_SAMPLES)


def test_concurrent_transcriptions_share_steps_and_keep_their_tokens(max_tiny_en, jfk_audio, lecture_60s_audio):
    """Five transcriptions at once: greedy with and without a prompt, a window offset by 7 s (its
    sequences are at other positions than the rest), word timestamps (the alignment pass), beam
    search (decoded on its own), checked as `_check_shared_runs_keep_their_tokens` says."""
    jobs = [(jfk_audio, DecodeOptions()),
            (lecture_60s_audio, DecodeOptions()),
            (jfk_audio, DecodeOptions(initial_prompt="President Kennedy's inaugural address.")),
            (lecture_60s_audio[7 * SAMPLE_RATE:], DecodeOptions(word_timestamps=True)),
            (jfk_audio, DecodeOptions(beam_size=3))]
    _check_shared_runs_keep_their_tokens(max_tiny_en.net, jobs)


def test_int8_transcriptions_share_steps_and_keep_their_tokens(max_tiny_en_int8, jfk_audio, lecture_60s_audio):
    """The same in int8, whose shared cache also holds the int8 cross K/V and their scales: greedy
    with and without a prompt, and a window offset by 7 s."""
    jobs = [(jfk_audio, DecodeOptions()),
            (lecture_60s_audio, DecodeOptions()),
            (jfk_audio, DecodeOptions(initial_prompt="President Kennedy's inaugural address.")),
            (lecture_60s_audio[7 * SAMPLE_RATE:], DecodeOptions())]
    _check_shared_runs_keep_their_tokens(max_tiny_en_int8.net, jobs)


def _check_shared_runs_keep_their_tokens(net, jobs: list[tuple[np.ndarray, DecodeOptions]]) -> None:
    """The jobs (audio, options) at once on a SharedModel of 4 rows: each has its tokens and segment
    times from alone; encoder calls were batched, steps carried several sequences, and the shared
    cache is empty afterwards."""
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
    with net._running:  # the encoder is busy: every transcription's first call waits, and they run together
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
