"""Batched long-form transcription (`maxwhisper.batched`, `--batch-size N`): Silero VAD chunks
decoded N at a time. Each window's tokens are openai-whisper's `decode()` of that window, on MAX
and on openai-whisper's own network; with timestamps a chunk cut in the middle of speech gets a
window for its last words; the segments land where the speech is in the recording; the default
loses no words against the sequential loop and faster-whisper's pipeline on the lecture."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import AUDIO

from maxwhisper.api import BackendError, DecodeOptions, MaxWhisperError
from maxwhisper.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from maxwhisper.batched import CHUNK_SECONDS, SpeechTimeline, speech_chunks, transcribe_batched
from maxwhisper.scoring import normalize, wer

BATCHED = DecodeOptions(batch_size=2, temperature=(0.0,))  # text only per chunk: the batched default
TIMESTAMPS = dataclasses.replace(BATCHED, without_timestamps=False)


@pytest.fixture(scope="module")
def lecture_chunks(lecture_60s_audio):
    return speech_chunks(lecture_60s_audio)


def test_speech_chunks_cover_the_speech_in_at_most_30_s_each(lecture_chunks, lecture_60s_audio):
    chunks, metadata, time_map = lecture_chunks
    assert len(chunks) >= 2
    assert all(0 < len(c) <= CHUNK_SECONDS * SAMPLE_RATE for c in chunks)
    offsets = [m["offset"] for m in metadata]
    durations = [m["duration"] for m in metadata]
    assert offsets == pytest.approx(np.cumsum([0.0] + durations[:-1]).tolist())
    assert [len(c) / SAMPLE_RATE for c in chunks] == pytest.approx(durations)
    # the speech-only timeline maps into the recording, in order
    original = [time_map.original(t) for t in np.linspace(0, sum(durations), 50)]
    assert original == sorted(original) and 0 <= original[0] and original[-1] <= len(lecture_60s_audio) / SAMPLE_RATE


def test_speech_timeline_maps_whole_samples_to_their_region():
    # regions [0, 1001) and [161001, 200000): speech sample 1001 is the second region's first,
    # 10.06 s into the recording, though 1001 / 16000 * 16000 rounds down to 1000 in floats
    timeline = SpeechTimeline([{"start": 0, "end": 1001}, {"start": 161001, "end": 200000}])
    assert timeline.original(1001 / SAMPLE_RATE) == pytest.approx(161001 / SAMPLE_RATE)
    assert timeline.original(1001 / SAMPLE_RATE, is_end=True) == pytest.approx(1001 / SAMPLE_RATE)  # the first's end
    assert timeline.original(0.05) == pytest.approx(0.05) and timeline.original(0.5) == pytest.approx(10.5)
    assert timeline.original(2.0) == pytest.approx(2.0 + 160000 / SAMPLE_RATE)


def test_speech_after_a_long_silence_keeps_its_time(max_tiny_en, jfk_audio):
    audio = np.concatenate([jfk_audio, np.zeros(10 * SAMPLE_RATE, np.float32), jfk_audio])
    result = max_tiny_en.transcribe(audio, TIMESTAMPS)
    second = [s for s in result.segments if "ask not" in s.text.lower() or s.start > 11.0]
    assert result.text.lower().count("fellow americans") == 2
    assert second and all(s.start >= 20.0 for s in second if s.start > 11.0)
    assert max(s.end for s in result.segments) <= len(audio) / SAMPLE_RATE + 0.02


def _chunk_tokens(result) -> list[list[int]]:
    """Segments' tokens regrouped by chunk (`seek`: where the chunk starts in the recording)."""
    groups: dict[int, list[int]] = {}
    for s in result.segments:
        groups.setdefault(s.seek, []).extend(s.tokens)
    return list(groups.values())


def _whisper_decode(torch_model, samples: list[np.ndarray], without_timestamps: bool):
    """openai-whisper's `decode()` of each window, given as its samples."""
    import torch
    import whisper

    mels = np.stack([log_mel_spectrogram(s, 80, padding=N_SAMPLES)[:, :N_FRAMES] for s in samples])
    return whisper.decode(
        torch_model.module,
        torch.from_numpy(mels),
        whisper.DecodingOptions(language="en", temperature=0.0, fp16=False, without_timestamps=without_timestamps),
    )


def test_each_chunk_decodes_as_openai_whisper_decodes_it(max_tiny_en, torch_tiny_en, lecture_chunks, lecture_60s_audio):
    chunks, _, _ = lecture_chunks
    reference = _whisper_decode(torch_tiny_en, chunks, without_timestamps=True)
    ours_max = transcribe_batched(max_tiny_en.net, lecture_60s_audio, BATCHED)
    ours_torch = transcribe_batched(torch_tiny_en, lecture_60s_audio, BATCHED)
    assert _chunk_tokens(ours_max) == _chunk_tokens(ours_torch) == [list(r.tokens) for r in reference]
    assert len(ours_max.segments) == len(chunks)  # text only: a segment per chunk
    assert ours_max.text == ours_torch.text
    assert ours_max.text.split() == " ".join(r.text for r in reference).split()


@pytest.fixture(scope="module")
def lecture_75s_audio():
    """Its second chunk ends in the middle of a sentence."""
    from maxwhisper.audio import load_audio

    return load_audio(AUDIO / "physicsworks.flac")[: 75 * SAMPLE_RATE]


def test_a_chunk_cut_in_speech_gets_a_window_for_its_last_words(max_tiny_en, torch_tiny_en, lecture_75s_audio):
    from maxwhisper.tokenizer import get_tokenizer

    timestamp_begin = get_tokenizer(False).timestamp_begin
    chunks, _, _ = speech_chunks(lecture_75s_audio)
    first = _whisper_decode(torch_tiny_en, chunks, without_timestamps=False)
    # whisper.decode of each chunk alone: some stop at a segment they open (<|t|><|t|><|endoftext|>)
    cut = [i for i, r in enumerate(first) if r.tokens[-2:] == [r.tokens[-1]] * 2 and r.tokens[-1] >= timestamp_begin]
    assert cut
    seek = {i: (first[i].tokens[-1] - timestamp_begin) * 2 for i in cut}  # in mel frames
    rest = _whisper_decode(torch_tiny_en, [chunks[i][seek[i] * 160 :] for i in cut], without_timestamps=False)
    expected = [list(r.tokens) for r in first]
    for i, r in zip(cut, rest):
        expected[i] = expected[i][:-1] + list(r.tokens)  # the open segment is decoded again from its start

    ours = transcribe_batched(max_tiny_en.net, lecture_75s_audio, TIMESTAMPS)
    assert _chunk_tokens(ours) == expected
    # no words lost: as many as text only gives (the same speech, decoded without timestamps)
    text_only = transcribe_batched(max_tiny_en.net, lecture_75s_audio, BATCHED)
    n_words = len(normalize(ours.text).split())
    assert abs(n_words - len(normalize(text_only.text).split())) <= 2
    assert n_words >= len(normalize(" ".join(r.text for r in first)).split()) + 3


def test_batch_size_does_not_change_the_tokens(max_tiny_en, lecture_75s_audio):
    one = transcribe_batched(max_tiny_en.net, lecture_75s_audio, dataclasses.replace(TIMESTAMPS, batch_size=1))
    many = transcribe_batched(max_tiny_en.net, lecture_75s_audio, dataclasses.replace(TIMESTAMPS, batch_size=8))
    assert [s.tokens for s in one.segments] == [s.tokens for s in many.segments]
    assert [(s.start, s.end) for s in one.segments] == [(s.start, s.end) for s in many.segments]


def test_batched_default_loses_no_words_on_the_lecture(max_tiny_en):
    """Within 0.5 points of WER of the better of sequential MAX and faster-whisper's
    BatchedInferencePipeline in its default mode (text only; greedy, as every backend here), on the
    lecture against its whisper-medium transcript."""
    from maxwhisper_baselines.faster_backend import FasterTranscriber

    from maxwhisper.audio import load_audio

    audio = load_audio(AUDIO / "physicsworks.flac")
    reference = (AUDIO / "physicsworks.whisper-medium.txt").read_text()
    batched = wer(reference, max_tiny_en.transcribe(audio, DecodeOptions(batch_size=8)).text)
    sequential = wer(reference, max_tiny_en.transcribe(audio, DecodeOptions()).text)
    faster = wer(
        reference, FasterTranscriber("tiny.en", device="cpu").transcribe(audio, DecodeOptions(batch_size=8)).text
    )
    assert batched <= min(sequential, faster) + 0.005, (batched, sequential, faster)


def test_segments_lie_in_the_recording_in_order(max_tiny_en, lecture_60s_audio, lecture_chunks):
    result = max_tiny_en.transcribe(
        lecture_60s_audio, dataclasses.replace(BATCHED, temperature=DecodeOptions().temperature)
    )
    duration = len(lecture_60s_audio) / SAMPLE_RATE
    starts = [s.start for s in result.segments]
    assert result.segments and starts == sorted(starts)
    assert all(0 <= s.start <= s.end <= duration + 0.02 for s in result.segments)
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert result.text.strip().startswith("Now I want to return to the conservation of mechanical energy.")
    assert result.timings.encode_s > 0 and result.timings.features_s is None


def test_silence_gives_no_segments(max_tiny_en):
    result = max_tiny_en.transcribe(np.zeros(20 * SAMPLE_RATE, np.float32), DecodeOptions(batch_size=4))
    assert result.segments == [] and result.text == ""


def test_batched_options_are_checked():
    with pytest.raises(MaxWhisperError, match="word timestamps are not available with batched"):
        DecodeOptions(batch_size=2, word_timestamps=True)
    with pytest.raises(MaxWhisperError, match="at least 1"):
        DecodeOptions(batch_size=0)
    assert DecodeOptions().batch_size is None  # the sequential loop unless asked


def test_openai_backend_refuses_batches_and_faster_runs_its_pipeline(openai_tiny_en, lecture_60s_audio):
    from maxwhisper_baselines.faster_backend import FasterTranscriber

    with pytest.raises(BackendError, match="no batched transcription"):
        openai_tiny_en.transcribe(lecture_60s_audio, DecodeOptions(batch_size=2))
    result = FasterTranscriber("tiny.en", device="cpu").transcribe(lecture_60s_audio, BATCHED)
    assert result.text.strip().startswith("Now I want to return to the conservation of mechanical energy.")
    assert result.segments[-1].end <= len(lecture_60s_audio) / SAMPLE_RATE + 0.02
