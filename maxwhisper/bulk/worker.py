"""The two steps a bulk job runs on Ray Data: `read_audio`, a task that decodes one file to 16 kHz
samples, and `Transcribe`, the actors that load a model once and transcribe file after file,
write each file's outputs and return its row of the results table.

Neither raises for a bad file: a file that cannot be read or transcribed becomes a row with status
"error" and a message for people naming the file as it was given (Ray Data fails the job on an
exception, and would drop a whole block of good rows with a bad one under `max_errored_blocks`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..api import SAMPLE_RATE, DecodeOptions, MaxWhisperError
from .table import PARTIAL


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """What every worker needs: the model, the decoding options, the outputs."""

    backend: str
    model: str
    device: str
    precision: str
    threads: int | None
    kernels: bool
    options: DecodeOptions
    output: str  # the output folder (shared by every node on a cluster)
    formats: tuple[str, ...]
    max_seconds: float | None
    files_at_once: int = 1  # files a worker transcribes at once (MAX shares their encoder calls and steps)

    def row_settings(self) -> dict[str, Any]:
        """The settings a results row records; a rerun redoes rows whose settings differ."""
        options = dataclasses.asdict(self.options)
        options["temperature"] = list(self.options.temperature)
        return {"backend": self.backend, "model": self.model, "precision": self.precision, "options": options}


def _for_people(message: str, row: dict) -> str:
    """A message about `row`'s file that names it as the user gave it, never by the worker's path."""
    message = message.replace(row["path"], row["name"]).replace(f"'{Path(row['path']).name}'", f"'{row['name']}'")
    return message if row["name"] in message else f"{row['name']}: {message}"


READ_NICE = 10  # the read tasks' niceness below workers of several threads


def read_audio(row: dict, max_seconds: float | None, below_workers: bool = False) -> dict:
    """Ray Data task: `row` plus `audio` (float32 samples as bytes; empty on error), `read_s` and
    `error` (why the file cannot be read or holds nothing to transcribe; "" when it can: a column of
    None would reach the actors as NaN).

    `below_workers`: read at a lower priority than the workers, for workers of several threads: a
    read that takes a core from one of them stalls all its threads at their next join, so reads
    take what the workers leave (a worker waiting for its next file leaves its cores). A
    single-threaded worker loses only the core's time, and a read below it waits for that worker's
    next file to end: there the reads keep the workers' priority."""
    from ..audio import check_transcribable, load_audio

    _read_priority(below_workers)
    start = time.perf_counter()
    audio, error = b"", ""
    try:
        samples = load_audio(row["path"], max_seconds=max_seconds)
        check_transcribable(samples)  # no samples, too short or silent: the command line's and the app's rule
        audio = samples.tobytes()
    except MaxWhisperError as e:
        error = _for_people(str(e), row)
    except Exception as e:  # noqa: BLE001 - any failure is this file's row, never the job's end
        error = _for_people(f"cannot read {row['name']}: {type(e).__name__}: {e}", row)
    return {**row, "audio": audio, "read_s": time.perf_counter() - start, "error": error}


_normal_priority: list[int] = []  # this task process's niceness before its first read


def _read_priority(below_workers: bool) -> None:
    """This thread's niceness (Linux: per thread) for a read: READ_NICE below the workers, else its
    own (a task process may read for jobs of both kinds)."""
    if not hasattr(os, "setpriority"):
        return
    if not _normal_priority:
        _normal_priority.append(os.getpriority(os.PRIO_PROCESS, 0))
    try:
        nice = max(_normal_priority[0], READ_NICE) if below_workers else _normal_priority[0]
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:  # back up needs a privilege: the read runs lower, as it would in the other job
        pass


class Transcribe:
    """Ray Data actor: loads the model once; each call transcribes a batch of read files and returns
    their rows as JSON (`row`); `settings.files_at_once` calls run at once, on threads of their own.
    The model loads on a thread of its own: the actor counts as started as soon as it exists, so Ray
    Data reads files while the model loads (not after), and the first call waits for the load. A
    model that cannot be loaded gives rows with `fatal` set: the driver stops the job with that
    message."""

    def __init__(self, settings: JobSettings):
        self.settings = settings
        self.transcriber = None
        self.load_error: str | None = None
        self.loading = threading.Thread(target=self._load, name="load-model", daemon=True)
        self.loading.start()

    def _load(self) -> None:
        from ..registry import create_transcriber

        s = self.settings
        try:
            self.transcriber = create_transcriber(
                s.backend,
                model=s.model,
                device=s.device,
                precision=s.precision,
                threads=s.threads,
                kernels=s.kernels,
                max_batch=s.files_at_once,
            )
        except MaxWhisperError as e:
            self.load_error = str(e)
        except Exception as e:  # noqa: BLE001 - reported by the driver as the job's failure
            self.load_error = f"could not load {s.model} on {s.backend}: {type(e).__name__}: {e}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self.loading.join()
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return {"row": [json.dumps(self._transcribe(row), ensure_ascii=False) for row in rows]}

    def _transcribe(self, row: dict) -> dict:
        s = self.settings
        out: dict[str, Any] = {
            "path": row["name"],
            "output": row["output"],
            "status": "error",
            "error": row["error"] or None,
            "language": None,
            "duration": None,
            "text": None,
            "outputs": [],
            "timings": {"read_s": float(row["read_s"]), "transcribe_s": None, "write_s": None},
            **s.row_settings(),
            "device": None,
            "node": _node(),
        }
        if self.load_error is not None:
            return {**out, "error": self.load_error, "fatal": True}
        if row["error"]:
            return out
        audio = np.frombuffer(row["audio"], dtype=np.float32).copy()
        out["duration"] = len(audio) / SAMPLE_RATE
        try:
            result = self.transcriber.transcribe(audio, s.options)
        except MaxWhisperError as e:
            return {**out, "error": _for_people(str(e), row)}
        except Exception as e:  # noqa: BLE001 - this file's row, the job goes on
            if os.environ.get("MAXWHISPER_DEBUG"):
                traceback.print_exc()
            return {**out, "error": _for_people(f"transcription failed: {type(e).__name__}: {e}", row)}
        out.update(language=result.language, text=result.text, device=result.device)
        out["timings"].update(
            transcribe_s=result.timings.total_s, encode_s=result.timings.encode_s, decode_s=result.timings.decode_s
        )
        if not result.text.strip():
            return {**out, "error": f"{row['name']}: no speech found in {out['duration']:.1f} s of audio"}
        start = time.perf_counter()
        out["outputs"] = [write_output(Path(s.output), row["output"], fmt, result, row["name"]) for fmt in s.formats]
        out["timings"]["write_s"] = time.perf_counter() - start
        return {**out, "status": "ok"}


def write_output(folder: Path, relative: str, fmt: str, result, name: str) -> str:
    """`folder/relative.fmt`, written whole under another name and renamed into place: a job killed
    meanwhile leaves no half-written output. Returns the path under `folder`."""
    from ..formats import render

    target = folder / f"{relative}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{PARTIAL}{os.getpid()}")
    text = render(result, fmt, audio=name)
    tmp.write_text(text if text.endswith("\n") or not text else text + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return f"{relative}.{fmt}"


def _node() -> str | None:
    """The Ray node this worker runs on."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
