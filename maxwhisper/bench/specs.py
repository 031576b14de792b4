"""The benchmark's typed specs: what a mode of `maxwhisper bench` runs (one record per subcommand,
its options and nothing else, which `cli.spec_of` builds from the command line), and what a worker
subprocess is asked to do (`WorkerSpec`, handed to it as JSON)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..api import DecodeOptions
from .clips import Clip


@dataclass(frozen=True, kw_only=True)
class Run:
    """What every mode takes: where its results go, and the cores kept busy while it measures."""

    out: Path | None  # None: the mode's default folder
    background_load: int  # cores kept busy by spinning processes (a shared machine); output names get -loadN
    cpu_level: str | None  # every implementation keeps to this x86-64 level's code; None: the CPU's own


@dataclass(frozen=True, kw_only=True)
class Measured(Run):
    """A mode that runs implementations in worker processes: which, and how they decode."""

    backends: list[str] | None  # None: every registered backend
    precisions: list[str] | None  # None: each backend's every precision on the device
    models: list[str]
    decode: DecodeOptions
    timeout: float  # seconds one implementation may take


@dataclass(frozen=True, kw_only=True)
class ClipsRun(Measured):
    """`bench clips` (the default): each implementation transcribes each clip, timed."""

    devices: list[str] | None  # None: cpu, and gpu where nvidia-smi lists one
    audio: list[str] | None  # files, FILE#channel, folders; None: `clips.DEFAULT_CLIPS`
    repeats: int
    rounds: int
    quick: bool
    html: bool


@dataclass(frozen=True, kw_only=True)
class BatchedRun(Measured):
    """`bench batched`: batched long-form transcription of one clip at each batch size."""

    devices: list[str] | None
    audio: str | None  # FILE or FILE#channel; None: `clips.LONG_FORM`
    repeats: int
    quick: bool
    html: bool
    batch_sizes: list[int]


@dataclass(frozen=True, kw_only=True)
class StreamingRun(Measured):
    """`bench streaming`: each clip streamed through the live transcriber in real time."""

    devices: list[str] | None
    audio: list[str] | None  # None: `streaming.STREAMING_CLIPS`
    quick: bool
    chunk: float  # seconds of audio per chunk
    streams: int  # streams of each clip, their chunk boundaries shifted apart


@dataclass(frozen=True, kw_only=True)
class BulkRun(Measured):
    """`bench bulk`: bulk jobs on Ray Data over the test clips repeated, on the CPU."""

    batch_sizes: list[int]
    workers: list[int]
    minutes: float  # at least this much audio


@dataclass(frozen=True, kw_only=True)
class ServeRun(Run):
    """`bench serve`: the HTTP service under closed-loop load."""

    seconds: float  # of load per clip and concurrency
    concurrency: list[int]


@dataclass(frozen=True, kw_only=True)
class RealtimeRun(Run):
    """`bench realtime`: live sessions against one replica, as many as keep up."""

    backends: list[str] | None
    precisions: list[str] | None
    sessions: list[int]
    seconds: float | None  # the lecture's first seconds; None: all of it
    cpus: float  # of the one model replica
    p90: float  # the p90 commit latency N sessions must keep to keep up


def decode_json(options: DecodeOptions) -> dict:
    """The options as the results' JSON records them (the temperatures a list)."""
    return {**dataclasses.asdict(options), "temperature": list(options.temperature)}


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """One worker subprocess's work: `kind` names the function that does it (`worker.WORKERS`,
    `streaming.streaming_worker`, `bulk.bulk_reference_worker`), the rest what each reads."""

    kind: str
    backend: str
    model: str
    device: str
    precision: str
    threads: int | None
    options: DecodeOptions
    clips: tuple[Clip, ...] = ()  # transcribe, throughput (the first), streaming
    repeats: int = 1  # timed runs after a warm-up: transcribe, throughput
    batch_sizes: tuple[int, ...] = ()  # throughput
    chunk_s: float = 1.0  # streaming
    streams: int = 1  # streaming
    files: tuple[str, ...] = ()  # bulk_reference
    files_at_once: int = 1  # bulk_reference
    out: str = ""  # the file the worker writes its result to (`worker.run_worker` sets it)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "options": decode_json(self.options)})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        d = json.loads(text)
        options = DecodeOptions(**{**d["options"], "temperature": tuple(d["options"]["temperature"])})
        return cls(
            **{
                **d,
                "options": options,
                "clips": tuple(Clip(**c) for c in d["clips"]),
                "batch_sizes": tuple(d["batch_sizes"]),
                "files": tuple(d["files"]),
            }
        )
