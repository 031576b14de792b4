"""`bench streaming`: each implementation streams each clip through `maxwhisper.streaming` (the
same LocalAgreement-2 code for all), as the `stream` command does, `--streams` times with the chunk
boundaries shifted by chunk/streams each time (a word's commit depends on where it falls in a chunk,
so one stream's figures move between runs): commit latency (median, p90),
how far behind the stream was, the share of time spent computing and where it went (the encoder,
the rest), whether a repetition loop was committed, and the WER of the streamed text against the
implementation's own offline transcript and against the clip's reference. Each stream is a row of
the report; the aims are judged over all of a clip's streams together (their latencies pooled, their
WERs averaged, the highest compute share and loop ratio)."""

from __future__ import annotations

import dataclasses
import logging
import math
import shlex
import statistics
import time
from typing import Any

from ..api import DecodeOptions, MaxWhisperError
from ..scoring import wer
from .clips import REFERENCES, Clip, load_clip, pseudo_reference
from .records import implementation_label
from .report import _f, ratio_text, write_mode_report
from .specs import StreamingRun, WorkerSpec, decode_json
from .worker import ready_transcriber, run_worker

log = logging.getLogger(__name__)
STREAMING_CLIPS = ("jfk.flac", "physicsworks.flac")
# MAX's aims on each clip
COMPUTE_TARGET = 0.6  # seconds of computing per second of audio, at most
LATENCY_TARGET_S = 2.0  # median commit latency, at most
P90_TARGET_S = 3.5  # p90 commit latency, at most
WER_TARGET_POINTS = 1.0  # streamed WER - offline WER against the reference, percentage points, at most
LOOP_TARGET = 2.4  # `StreamReport.loop_ratio`, at most: the offline loop's compression-ratio threshold
FASTER_TARGET = 1.3  # faster-whisper's median latency / MAX's, at least: like with like (the same precision)


def stream_offsets(chunk_s: float, streams: int) -> list[float]:
    """Each stream's shift, k x chunk_s / streams for the k-th, in the milliseconds the results record
    it in. A MaxWhisperError where one stream would be shifted by less than 1 ms from the next (more
    streams than milliseconds in a chunk): the shifts would not all differ."""
    most = max(1, math.floor(chunk_s * 1000 + 1e-9))
    if streams > most:
        raise MaxWhisperError(
            f"--streams {streams} with --chunk {chunk_s:g}: the streams' chunk boundaries would "
            "be shifted by less than 1 ms from one stream to the next, and some streams would be "
            f"the same; use --streams {most} or fewer"
        )
    return [round(k * chunk_s / streams, 3) for k in range(streams)]


def streaming_worker(spec: WorkerSpec) -> dict[str, Any]:
    """In the worker process: per clip, the offline transcript, then the streams."""
    t = ready_transcriber(spec)
    options = spec.options
    label = f"[{spec.backend} {t.precision} {t.device} streaming]"
    log.info(f"{label} loaded {t.model}: load {t.load_s:.2f} s, compile {t.compile_s:.2f} s")
    rows = []
    for clip in spec.clips:
        audio = load_clip(clip)
        t.transcribe(audio[:80_000], dataclasses.replace(options, word_timestamps=True))  # first-call costs
        offline = t.transcribe(audio, options)
        for offset_s in stream_offsets(spec.chunk_s, spec.streams):
            rows.append(_stream_row(t, clip, audio, spec.chunk_s, offset_s, options, offline))
            log.info(
                f"{label} {clip.name}, chunks shifted {offset_s:g} s: {rows[-1]['updates']} updates, latency "
                f"median {_s(rows[-1]['latency_median_s'])}, compute share {rows[-1]['compute_share']:.2f}"
            )
    return {
        "ok": True,
        "backend": spec.backend,
        "precision": t.precision,
        "device": t.device,
        "implementation": implementation_label(spec.backend, t.precision),
        "load_s": t.load_s,
        "compile_s": t.compile_s,
        "rows": rows,
    }


def _stream_row(t, clip: Clip, audio, chunk_s: float, offset_s: float, options, offline) -> dict[str, Any]:
    from ..streaming import quantile, stream_audio

    stages = []  # each update's timings (not the stream's end: `Streamer.finish`)

    def on_update(update, now, behind):
        if not update.final:
            stages.append(update.timings)

    report = stream_audio(t, audio, chunk_s, options, offset_s=offset_s, on_update=on_update)
    latencies, update_s = report.latencies, sorted(s.total_s for s in stages)
    return {
        "audio": clip.name,
        "offset_s": offset_s,
        "audio_s": report.audio_s,
        "updates": report.updates,
        "compute_s": report.compute_s,
        "compute_share": report.compute_share,
        "encode_s": sum(s.encode_s or 0.0 for s in stages),
        "update_median_s": statistics.median(update_s),
        "update_p90_s": quantile(update_s, 0.9),
        "latency_median_s": statistics.median(latencies) if latencies else None,
        "latency_p90_s": report.latency_quantile(0.9),
        "latencies": [round(float(x), 3) for x in latencies],
        "words": len(report.words),
        "behind_median_s": statistics.median(report.behind),
        "behind_max_s": max(report.behind),
        "loop_ratio": report.loop_ratio,
        "held_back": report.held_back,
        "text": report.text,
        "offline_text": offline.text,
        "offline_s": offline.timings.total_s,
    }


def add_streaming_accuracy(runs: list[dict]) -> None:
    for run in runs:
        for r in run["rows"]:
            reference = REFERENCES.get(r["audio"]) or pseudo_reference(r["audio"])
            r["wer_vs_offline"] = wer(r["offline_text"], r["text"])
            r["wer"] = wer(reference, r["text"]) if reference else None
            r["offline_wer"] = wer(reference, r["offline_text"]) if reference else None


def _pooled(run: dict, audio: str) -> dict[str, Any]:
    """One implementation's streams of one clip taken together: their latencies pooled (median, and
    p90 as `streaming.quantile`), the highest compute share and loop ratio, the streamed
    WERs (their mean judged)."""
    rows = [r for r in run["rows"] if r["audio"] == audio]
    wers = [r["wer"] for r in rows if r["wer"] is not None]
    if not all("latencies" in r for r in rows):  # results written before streams were pooled: one per clip
        median, p90 = rows[0]["latency_median_s"], rows[0]["latency_p90_s"]
    else:
        from ..streaming import quantile

        latencies = [x for r in rows for x in r["latencies"]]
        median = statistics.median(latencies) if latencies else None
        p90 = quantile(latencies, 0.9)
    return {
        "streams": len(rows),
        "median": median,
        "p90": p90,
        "compute_share": max(r["compute_share"] for r in rows),
        "loop_ratio": max(r["loop_ratio"] for r in rows),
        "wers": wers,
        "wer": statistics.mean(wers) if wers else None,
        "offline_wer": rows[0]["offline_wer"],
    }


def streaming_targets(runs: list[dict]) -> list[str]:
    """The streaming mode's aims, said for each MAX implementation on each clip, over all its streams of the
    clip (`_pooled`). Its latency is compared like with like, against faster-whisper at the same
    precision (where it ran), and, said beside it, against faster-whisper's lowest whatever its precision."""
    groups = [
        (run, audio, _pooled(run, audio)) for run in runs for audio in dict.fromkeys(r["audio"] for r in run["rows"])
    ]
    lines = []
    for run, audio, g in groups:
        if run["backend"] != "max":
            continue
        median, p90 = g["median"], g["p90"]
        over = f" ({g['streams']} streams)" if g["streams"] > 1 else ""
        lines.append(
            f"- {audio}, {run['implementation']}{over}: compute {g['compute_share']:.2f} s per audio second "
            f"<= {COMPUTE_TARGET}: {_met(g['compute_share'] <= COMPUTE_TARGET)}; commit latency median "
            f"{_s(median)} <= {LATENCY_TARGET_S:g} s: "
            f"{_met(median is not None and median <= LATENCY_TARGET_S)}, p90 {_s(p90)} <= {P90_TARGET_S:g} s: "
            f"{_met(p90 is not None and p90 <= P90_TARGET_S)}; no loop committed (loop ratio "
            f"{g['loop_ratio']:.2f} <= {LOOP_TARGET}): {_met(g['loop_ratio'] <= LOOP_TARGET)}"
        )
        if g["wer"] is not None and g["offline_wer"] is not None:
            gap = 100 * (g["wer"] - g["offline_wer"])
            each = (
                (
                    " (the streams' mean; each "
                    + ", ".join(f"{100 * (w - g['offline_wer']):+.2f}" for w in g["wers"])
                    + ")"
                )
                if g["streams"] > 1
                else ""
            )
            lines.append(
                f"  - streamed WER {100 * g['wer']:.2f} % vs offline {100 * g['offline_wer']:.2f} % against "
                f"the reference: {gap:+.2f} points{each} (at most +{WER_TARGET_POINTS:g}): "
                f"{_met(gap <= WER_TARGET_POINTS)}"
            )
        faster = [
            (f["median"], fr["implementation"], fr["precision"])
            for fr, a, f in groups
            if fr["backend"] == "faster" and a == audio and f["median"] is not None
        ]
        if not (faster and median):
            continue
        same = [(latency, name) for latency, name, precision in faster if precision == run["precision"]]
        if same:
            latency, name = same[0]
            lines.append(
                f"  - median latency against {name} ({_s(latency)}): "
                f"{ratio_text(latency / median, FASTER_TARGET)}x lower (at least {FASTER_TARGET}x): "
                f"{_met(latency / median >= FASTER_TARGET)}"
            )
        best, name, _ = min(faster)
        if not same or name != same[0][1]:
            lines.append(
                f"  - median latency against faster-whisper's lowest ({name} {_s(best)}): {best / median:.2f}x lower"
            )
    return lines


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _s(x: float | None) -> str:
    return _f(x, 2, " s")


def _pct(x: float | None) -> str:
    return _f(None if x is None else 100 * x, 2, " %")


def streaming_markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["streaming"]
    command = f". `{doc['command']}`" if doc.get("command") else ""  # older results did not record it
    lines = [
        f"# Streaming: {s['model']}, {doc['device']}, chunks of {s['chunk_s']:g} s (LocalAgreement-2)",
        "",
        f"{m.get('cpu')} ({m.get('vector_isa')}), {m.get('cores')} cores; {doc['created']}; "
        f"background load {doc['options']['background_load']} core(s){command}",
        "",
        "| clip | implementation | chunks shifted | updates | commit latency median | p90 | behind median / max | "
        "compute share | update median / p90 | encoder share | loop ratio | held back | WER vs own offline | "
        "streamed WER | offline WER |",
        "|---|---|" + "---:|" * 13,
    ]
    for run in s["runs"]:
        for r in run["rows"]:
            encoder = r["encode_s"] / r["compute_s"] if r["compute_s"] else 0.0
            lines.append(
                f"| {r['audio']} | {run['implementation']} | {r.get('offset_s', 0):g} s | {r['updates']} | "
                f"{_s(r['latency_median_s'])} | "
                f"{_s(r['latency_p90_s'])} | {_s(r['behind_median_s'])} / {_s(r['behind_max_s'])} | "
                f"{r['compute_share']:.2f} | {_s(r['update_median_s'])} / {_s(r['update_p90_s'])} | "
                f"{100 * encoder:.0f} % | {r['loop_ratio']:.2f} | {r['held_back']} | "
                f"{_pct(r['wer_vs_offline'])} | {_pct(r['wer'])} | {_pct(r['offline_wer'])} |"
            )
    lines += [
        "",
        "Chunks shifted: the stream's first chunk was this long, so that its chunk boundaries lie this "
        "much later than the first stream's. "
        "Commit latency: when a word was committed minus when its audio ended. Behind: the seconds of "
        "audio that had arrived and were not yet transcribed as each update ended. Compute share: seconds "
        "spent transcribing per second of audio (above 1 the stream falls behind); update: one update's "
        "seconds; encoder share: of the computing time, in the encoder (the rest: decoding, word "
        "alignment, the log-Mel). Loop ratio: the highest compression ratio of 40 committed words in a row "
        "(speech below 2; a repetition loop far above the offline loop's threshold of 2.4). Held back: "
        "hypothesis segments that failed the offline rules, never committed. Streamed and offline WER are "
        "against the clip's reference (jfk: the speech's text; the lecture: its whisper-medium transcript).",
        "",
        "Targets:",
        *streaming_targets(s["runs"]),
    ]
    for f in doc["failures"]:
        lines.append(f"- FAILED: {f['implementation']}: {f['error']}")
    return "\n".join(lines) + "\n"


def _command(run: StreamingRun, impls: list[tuple[str, str]], device: str, model: str) -> str:
    """The command line that runs these streams again (one device and model of the run)."""
    flags = ["--quick"] if run.quick else []
    flags += [
        "--backends",
        ",".join(dict.fromkeys(b for b, _ in impls)),
        "--precisions",
        ",".join(dict.fromkeys(p for _, p in impls)),
        "--devices",
        device,
        "--models",
        model,
        "--chunk",
        str(run.chunk),
        "--streams",
        str(run.streams),
    ]
    flags += ["--background-load", str(run.background_load)] if run.background_load else []
    flags += ["--beam-size", str(run.decode.beam_size)] if run.decode.beam_size != 1 else []
    if run.decode.temperature != DecodeOptions().temperature:
        flags += ["--temperature", ",".join(f"{t:g}" for t in run.decode.temperature)]
    flags += ["--language", run.decode.language] if run.decode.language else []
    flags += ["--audio", *run.audio] if run.audio else []
    return "python -m maxwhisper bench streaming " + shlex.join(flags)


def main_streaming(
    run: StreamingRun,
    clips: list[Clip],
    impls: list[tuple[str, str]],
    device: str,
    model: str,
    threads: int,
    machine: dict,
    vers: dict,
    out_dir,
    stem: str,
) -> int:
    """Each implementation's streams of the clips on one device and model; writes `stem`.{json,md}."""
    runs, failures = [], []
    decode = decode_json(run.decode)
    for backend, precision in impls:
        log.info(f"--- {implementation_label(backend, precision)} streaming {model} on {device} ---")
        spec = WorkerSpec(
            kind="streaming",
            backend=backend,
            model=model,
            device=device,
            precision=precision,
            threads=threads,
            clips=tuple(clips),
            chunk_s=run.chunk,
            streams=run.streams,
            options=run.decode,
        )
        worker = run_worker(spec, run.timeout)
        if worker.get("ok"):
            runs.append(worker)
        else:
            failures.append({"implementation": implementation_label(backend, precision), "error": worker.get("error")})
    add_streaming_accuracy(runs)
    doc = {
        "schema_version": 1,
        "device": device,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": _command(run, impls, device, model),
        "machine": machine,
        "versions": vers,
        "options": {
            "chunk_s": run.chunk,
            "streams": run.streams,
            "threads": threads,
            "background_load": run.background_load,
            "decode": decode,
        },
        "streaming": {"model": model, "chunk_s": run.chunk, "runs": runs},
        "failures": failures,
    }
    write_mode_report(doc, streaming_markdown(doc), out_dir, stem)
    return int(bool(failures))
