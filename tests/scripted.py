"""A transcriber that hears a script instead of audio, for the streaming tests."""

from __future__ import annotations

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, Segment, Timings, TranscriptionResult, Word


class ScriptedTranscriber:
    """Hears the words of a script whose audio has arrived: word i spans [i * 0.5, (i + 1) * 0.5) s
    of the stream. Records the prompts and buffer lengths it was given."""

    backend, model, device, precision, load_s, compile_s = "scripted", "none", "cpu", "fp32", 0.0, 0.0

    def __init__(self, script: str):
        self.script = script.split()
        self.calls: list[tuple[float, str | None]] = []

    def transcribe(self, audio, options=DecodeOptions(), progress=None, on_segments=None):
        assert options.word_timestamps
        n = len(audio) / SAMPLE_RATE
        offset = round(audio[0], 3) if len(audio) else 0.0  # the test writes each sample's stream time
        self.calls.append((n, options.initial_prompt))
        heard = [(i, w) for i, w in enumerate(self.script) if i * 0.5 >= offset - 1e-6 and (i + 1) * 0.5 <= offset + n]
        ws = tuple(Word(i * 0.5 - offset, (i + 1) * 0.5 - offset, " " + w, 0.9) for i, w in heard)
        segments = [Segment(0, 0, ws[0].start, ws[-1].end, "".join(w.word for w in ws), (), words=ws)] if ws else []
        return TranscriptionResult(
            "".join(w.word for w in ws),
            segments,
            "en",
            "scripted",
            "none",
            "cpu",
            "fp32",
            n,
            Timings(total_s=0.4),
            options,
        )


class TurnScriptedTranscriber:
    """Hears word i of a script once its 0.5 s have arrived, counting from the first sample it is
    given, whatever the samples hold (a realtime turn of real audio, shorter than a stream's trim).
    Records the prompts it was given; `fail` raises that exception instead of hearing."""

    backend, model, device, precision, load_s, compile_s = "scripted", "none", "cpu", "fp32", 0.0, 0.0

    def __init__(self, script: str, fail: Exception | None = None):
        self.script, self.fail = script.split(), fail
        self.prompts: list[str | None] = []

    def transcribe(self, audio, options=DecodeOptions(), progress=None, on_segments=None):
        if self.fail is not None:
            raise self.fail
        self.prompts.append(options.initial_prompt)
        n = len(audio) / SAMPLE_RATE
        ws = tuple(Word(i * 0.5, (i + 1) * 0.5, " " + w, 0.9) for i, w in enumerate(self.script) if (i + 1) * 0.5 <= n)
        segments = [Segment(0, 0, 0.0, ws[-1].end, "".join(w.word for w in ws), (), words=ws)] if ws else []
        return TranscriptionResult(
            "".join(w.word for w in ws),
            segments,
            "en",
            "scripted",
            "none",
            "cpu",
            "fp32",
            n,
            Timings(total_s=0.01),
            options,
        )
