"""The benchmark's clips: the default set, `--audio` specs (FILE, FILE#left/#right/#N, folders),
loading one channel, and the reference transcripts WER is measured against."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..extras import checkout

# --- reference transcripts, keyed by clip name (file name, "#left"/"#right" for one channel) ---
# Quoted from tests/audio/MANIFEST.md. physicsworks.flac has no human reference (its
# whisper-medium transcript is model output), so it gets agreement with openai-whisper, no WER.
_JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
REFERENCES: dict[str, str] = {
    "jfk.flac": _JFK,
    "jfk.wav": _JFK,
    "jfk.mp3": _JFK,
    # LibriSpeech test-clean 61-70968-0000, as asserted in faster-whisper's test_stereo_diarization
    "stereo_diarization.wav#left": (
        "He began a confused complaint against the wizard, who had vanished behind the curtain on the left."
    ),
    "stereo_diarization.wav#right": "The horizon seems extremely distant.",
}
DEFAULT_CLIPS = ("jfk.flac", "stereo_diarization.wav#left", "stereo_diarization.wav#right", "physicsworks.flac")
QUICK_CLIPS = ("jfk.flac",)
LONG_FORM = "physicsworks.flac"  # the clip of the speed target (203 s lecture)
CHANNELS = {"left": 0, "right": 1}


@dataclass(frozen=True)
class Clip:
    name: str  # the key of REFERENCES and of the results: file name, plus "#left"/"#right"/"#<n>"
    path: str  # absolute path of the file
    channel: int | None = None  # None: all channels averaged (load_audio); else this channel alone


def audio_dir() -> Path:
    """The test and benchmark audio: $MAXWHISPER_AUDIO_DIR where set, else the checkout's
    tests/audio (./tests/audio where maxwhisper is installed from a wheel)."""
    if os.environ.get("MAXWHISPER_AUDIO_DIR"):
        return Path(os.environ["MAXWHISPER_AUDIO_DIR"])
    return (checkout() or Path()) / "tests" / "audio"


def parse_clip(spec: str, base: Path | None = None) -> Clip:
    """'FILE', 'FILE#left', 'FILE#right' or 'FILE#<channel index>' -> Clip (the file must exist)."""
    from ..api import AudioError

    path_text, channel = spec, None
    if "#" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition("#")
        if tail in CHANNELS:
            path_text, channel = head, CHANNELS[tail]
        elif tail.isdigit():
            path_text, channel = head, int(tail)
    path = Path(path_text)
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    if not path.is_file():
        raise AudioError(f"audio file not found: {path_text}")
    suffix = "" if channel is None else "#" + next((k for k, v in CHANNELS.items() if v == channel), str(channel))
    return Clip(name=path.name + suffix, path=str(path.resolve()), channel=channel)


def resolve_clips(specs: Sequence[str] | None, quick: bool = False) -> list[Clip]:
    """--audio values (files, FILE#channel, folders of audio files) or the default set."""
    from ..api import AudioError
    from ..audio import MEDIA_SUFFIXES

    if not specs:
        base = audio_dir()
        return [parse_clip(s, base) for s in (QUICK_CLIPS if quick else DEFAULT_CLIPS)]
    clips: list[Clip] = []
    for spec in specs:
        if Path(spec).is_dir():
            files = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
            if not files:
                raise AudioError(f"no audio files in folder {spec}")
            clips += [parse_clip(str(p)) for p in files]
        else:
            clips.append(parse_clip(spec))
    seen, unique = set(), []
    for c in clips:
        if c.name in seen:  # the results are keyed by clip name
            raise AudioError(f"two clips are named {c.name!r}; rename one")
        seen.add(c.name)
        unique.append(c)
    return unique


def load_clip(clip: Clip):
    """float32 mono 16 kHz samples of the clip (one channel of it when `channel` is set)."""
    from ..api import AudioError
    from ..audio import load_audio

    if clip.channel is None:
        return load_audio(clip.path)
    import numpy as np
    import soundfile as sf

    try:
        data, rate = sf.read(clip.path, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot read {clip.path} with soundfile to split its channels: {e}") from e
    if clip.channel >= data.shape[1]:
        raise AudioError(f"{clip.path} has {data.shape[1]} channel(s), no channel {clip.channel}")
    return load_audio((int(rate), np.ascontiguousarray(data[:, clip.channel])))


def pseudo_reference(clip_name: str) -> str | None:
    """The lecture's whisper-medium transcript (model output, not human: see MANIFEST.md)."""
    path = audio_dir() / (Path(clip_name).stem + ".whisper-medium.txt")
    return path.read_text() if path.is_file() else None
