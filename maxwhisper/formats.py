"""Output writers: TranscriptionResult -> txt / srt / vtt / json text.

txt, srt and vtt follow openai-whisper's `whisper/utils.py` writers with their default options
(one subtitle per segment; with word timestamps a segment's subtitle spans its first to last word),
so the same result prints the same file as `whisper --output_format ...` would.
"""

from __future__ import annotations

import json
import math

from .api import TranscriptionResult

FORMATS = ("txt", "json", "srt", "vtt")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """As whisper.utils.format_timestamp: [HH:]MM:SS.mmm, hours shown when asked or when non-zero."""
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def _cues(result: TranscriptionResult):
    """(start, end, text) per subtitle, as whisper's SubtitlesWriter.iterate_result with default options."""
    if result.segments and result.segments[0].words is not None:
        for seg in result.segments:
            if seg.words:  # segments whose words were cleared (empty/instantaneous) print nothing
                words = [w.word for w in seg.words]
                yield seg.words[0].start, seg.words[-1].end, words[0].strip() + "".join(words[1:])
    else:
        for seg in result.segments:
            yield seg.start, seg.end, seg.text.strip().replace("-->", "->")


def to_txt(result: TranscriptionResult) -> str:
    """One line per segment, stripped (whisper's WriteTXT)."""
    return "".join(f"{seg.text.strip()}\n" for seg in result.segments)


def to_srt(result: TranscriptionResult) -> str:
    """SubRip: numbered cues, HH:MM:SS,mmm (hours always shown)."""
    out = []
    for i, (start, end, text) in enumerate(_cues(result), start=1):
        out.append(f"{i}\n{format_timestamp(start, True, ',')} --> {format_timestamp(end, True, ',')}\n{text}\n\n")
    return "".join(out)


def to_vtt(result: TranscriptionResult) -> str:
    """WebVTT: MM:SS.mmm, with HH: only from one hour on (whisper's WriteVTT; both are valid WebVTT)."""
    out = ["WEBVTT\n\n"]
    for start, end, text in _cues(result):
        out.append(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n\n")
    return "".join(out)


def _finite(x):
    """Strict JSON has no NaN/Infinity: such floats become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json(result: TranscriptionResult, audio: str | None = None) -> str:
    """One line: `result.to_dict()` (text, segments, timings with audio_s and rtfx, options, ...) plus "audio"."""
    d = result.to_dict()
    d["audio"] = None if audio is None else str(audio)
    return json.dumps(_finite(d), ensure_ascii=False)


WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def file_header(path: str) -> str:
    """The line that names a file's output among several files' output, as head and tail write it."""
    return f"==> {path} <==\n"


def render(result: TranscriptionResult, fmt: str, audio: str | None = None) -> str:
    """Text of `result` in format `fmt` (one of FORMATS)."""
    if fmt == "json":
        return to_json(result, audio)
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return WRITERS[fmt](result)
