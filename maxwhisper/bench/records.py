"""The benchmark's records: the implementations, statistics over timed runs, one `ClipResult` per
(implementation, clip) from the workers' output, its accuracy (WER, agreement with openai-whisper)
and the project's targets; the batched mode's accuracy."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..registry import BACKENDS
from ..scoring import agreement, pooled_wer, wer
from .clips import LONG_FORM, REFERENCES, pseudo_reference

# (backend, precision) per device, in run order: each backend's precisions there, from the registry
IMPLEMENTATIONS: dict[str, list[tuple[str, str]]] = {
    device: [(b.name, p) for b in BACKENDS.values() for p in b.precisions.get(device, ())]
    for device in dict.fromkeys(d for b in BACKENDS.values() for d in b.devices)
}
WER_TARGET_POINTS = 0.5  # MAX WER - openai WER, percentage points, at most
# MAX int8 against faster-whisper int8, total time: on the lecture 1.5x where the CPU has VNNI (int8
# dot products), 1.3x on an AVX2 one; on a short clip 1.3x on both
INT8_SPEED_TARGETS = {"long_form_vnni": 1.5, "long_form": 1.3, "short": 1.3}
SHORT_CLIP = "jfk.flac"
DECODER_TARGET = 2.0  # MAX int8's decoder tokens/s on the lecture against MAX fp32's, at least
# a result's key -> its name in older files (the same value: audio s per processing s)
OLD_NAMES = {"rtfx": "rtf"}


def current_names(record: dict[str, Any]) -> dict[str, Any]:
    """A result record as written now: a key that older files have under another name (`OLD_NAMES`)
    is given its current name too. The report and the app's Benchmarks tab read results through this."""
    renamed = {new: record[old] for new, old in OLD_NAMES.items() if new not in record and old in record}
    return {**record, **renamed}


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min, max, quartiles (inclusive method: the data's own range) and IQR of the values."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("spread() of no values")
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(v)}


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median, or None when any value is None (a stage the backend does not time)."""
    v = list(values)
    if not v or any(x is None for x in v):
        return None
    return statistics.median(v)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def implementation_label(backend: str, precision: str) -> str:
    return f"{BACKENDS[backend].label if backend in BACKENDS else backend} {precision}"


def merge_round(first: dict[str, Any], later: dict[str, Any]) -> None:
    """Pools a later round's timed runs into the first round's worker output, clip by clip; a clip
    that failed in any round is reported failed."""
    for mine, theirs in zip(first["clips"], later["clips"], strict=True):
        if "error" in mine or "error" in theirs:
            mine.setdefault("error", theirs.get("error"))
            continue
        mine["runs"] += theirs["runs"]
        mine["deterministic"] = mine["deterministic"] and theirs["deterministic"] and mine["tokens"] == theirs["tokens"]
        mine["peak_rss_mib"] = max(mine["peak_rss_mib"], theirs["peak_rss_mib"])


@dataclass(kw_only=True)
class ClipResult:
    """One implementation's figures on one clip: a row of the per-clip results, written key for key
    (`dataclasses.asdict`) as `results` in the JSON (benchmarks/README.md gives the schema). Times in
    seconds, memory in MiB; the accuracy fields are filled by `add_accuracy`."""

    audio: str  # the clip's name (`clips.Clip.name`)
    backend: str
    model: str
    device: str
    precision: str
    implementation: str  # "MAX fp32"
    audio_s: float
    total_s_median: float
    total_s_min: float
    total_s_max: float
    total_s_q1: float
    total_s_q3: float
    total_s_iqr: float
    total_s_runs: list[float]  # every timed run's, in order
    decode_s_runs: list[float | None]
    rtfx: float | None  # audio seconds per median processing second
    load_s: float
    compile_s: float
    features_s: float | None  # the stages' medians; None where the backend does not time one apart
    encode_s: float | None
    decode_s: float | None
    warmup_s: float
    n_tokens: int
    tokens_per_s: float | None  # of the decoder
    peak_rss_mib: float
    rss_after_load_mib: float
    gpu_mem_mib: float | None
    wer: float | None = None  # against the clip's reference, where it has one
    agreement: float | None = None  # 1 - WER against openai-whisper's transcript
    wer_vs_openai: float | None = None
    tokens_identical_to_openai: bool | None = None
    agreement_with: str | None = None  # the openai-whisper implementation compared with
    deterministic: bool  # every timed run gave the warm-up's tokens
    language: str
    threads: int
    repeats: int
    text: str
    tokens: list[int]
    worker_wall_s: float | None = None  # the worker processes' wall time, all clips and rounds


def make_records(worker: dict[str, Any], threads: int, repeats: int) -> tuple[list[ClipResult], list[dict]]:
    """A worker's output -> one result per clip (and failure entries for failed clips)."""
    records, failures = [], []
    for c in worker["clips"]:
        base = {
            "audio": c["audio"],
            "backend": worker["backend"],
            "model": worker["model"],
            "device": worker["device"],
            "precision": worker["precision"],
        }
        if "error" in c:
            failures.append({**base, "error": c["error"]})
            continue
        totals = spread(r["total_s"] for r in c["runs"])
        stage = {k: median_or_none(r[k] for r in c["runs"]) for k in ("features_s", "encode_s", "decode_s")}
        n_tokens = len(c["tokens"])
        records.append(
            ClipResult(
                **base,
                implementation=implementation_label(worker["backend"], worker["precision"]),
                audio_s=c["audio_s"],
                total_s_median=totals["median"],
                total_s_min=totals["min"],
                total_s_max=totals["max"],
                total_s_q1=totals["q1"],
                total_s_q3=totals["q3"],
                total_s_iqr=totals["iqr"],
                total_s_runs=[r["total_s"] for r in c["runs"]],
                decode_s_runs=[r["decode_s"] for r in c["runs"]],
                rtfx=c["audio_s"] / totals["median"] if totals["median"] > 0 else None,
                load_s=worker["load_s"],
                compile_s=worker["compile_s"],
                **stage,
                warmup_s=c["warmup_s"],
                n_tokens=n_tokens,
                tokens_per_s=ratio(n_tokens, stage["decode_s"]),
                peak_rss_mib=c["peak_rss_mib"],
                rss_after_load_mib=worker["rss_after_load_mib"],
                gpu_mem_mib=c.get("gpu_mem_mib"),
                deterministic=c["deterministic"],
                language=c["language"],
                threads=threads,
                repeats=repeats,
                text=c["text"],
                tokens=c["tokens"],
            )
        )
    return records, failures


def _openai_record(records: list[ClipResult], rec: ClipResult) -> ClipResult | None:
    """The openai-whisper record to compare `rec` with: same clip, model and device; the same
    precision when there is one (GPU fp16 vs fp16), else fp32."""
    same = [
        r
        for r in records
        if r.backend == "openai" and r.audio == rec.audio and r.model == rec.model and r.device == rec.device
    ]
    for precision in (rec.precision, "fp32"):
        for r in same:
            if r.precision == precision:
                return r
    return same[0] if same else None


def add_accuracy(records: list[ClipResult], references: dict[str, str] = REFERENCES) -> None:
    """Fills wer, wer_vs_openai, agreement, tokens_identical_to_openai in place."""
    for rec in records:
        reference = references.get(rec.audio)
        rec.wer = wer(reference, rec.text) if reference else None
        ref = _openai_record(records, rec)
        if ref is not None:
            rec.wer_vs_openai = wer(ref.text, rec.text)
            rec.agreement = agreement(ref.text, rec.text)
            rec.tokens_identical_to_openai = rec.tokens == ref.tokens
            rec.agreement_with = ref.implementation


def _find(records: list[ClipResult], **keys) -> ClipResult | None:
    return next((r for r in records if all(getattr(r, k) == v for k, v in keys.items())), None)


def compute_targets(
    records: list[ClipResult], references: dict[str, str] = REFERENCES, vnni: bool = False
) -> list[dict]:
    """The project's targets, per (device, model):
    - speed: MAX total time on the long-form clip vs faster-whisper, like with like: MAX fp32 (fp16
      on GPU) against every faster-whisper precision, "> 1"; MAX int8 against faster-whisper int8,
      at least `INT8_SPEED_TARGETS` (the long-form figure by whether the CPU has VNNI, `vnni`), also
      on jfk. ratio = faster's median / MAX's median: > 1 means MAX is faster. Without the lecture
      in the run, the longest clip stands in (the entry names it).
    - decoder: MAX int8's decoder tokens/s on the long-form clip / MAX fp32's, at least 2.
    - wer: MAX WER minus openai-whisper WER, pooled over the clips with a reference, in percentage
      points; target <= +0.5.
    """
    targets = []
    for device, model in sorted({(r.device, r.model) for r in records}):
        recs = [r for r in records if r.device == device and r.model == model]
        clips = {r.audio: r.audio_s for r in recs}
        lecture = LONG_FORM if LONG_FORM in clips else max(clips, key=clips.get)
        max_precisions = sorted({r.precision for r in recs if r.backend == "max"})
        for mp in max_precisions:
            if mp == "int8":
                goal = INT8_SPEED_TARGETS["long_form_vnni" if vnni else "long_form"]
                pairs = [(lecture, "int8", goal)] + (
                    [(SHORT_CLIP, "int8", INT8_SPEED_TARGETS["short"])]
                    if SHORT_CLIP in clips and SHORT_CLIP != lecture
                    else []
                )
            else:
                pairs = [(lecture, fp, None) for fp in ("fp32", "int8", "fp16")]
            for clip, fp, goal in pairs:
                m = _find(recs, backend="max", precision=mp, audio=clip)
                f = _find(recs, backend="faster", precision=fp, audio=clip)
                if m is None or f is None:
                    continue
                r = ratio(f.total_s_median, m.total_s_median)
                targets.append(
                    {
                        "kind": "speed",
                        "device": device,
                        "model": model,
                        "audio": clip,
                        "long_form": clip == LONG_FORM,
                        "max_precision": mp,
                        "versus": implementation_label("faster", fp),
                        "max_total_s": m.total_s_median,
                        "versus_total_s": f.total_s_median,
                        "ratio": r,
                        "target": f">= {goal}x" if goal else "> 1 = MAX faster",
                        "met": r is not None and (r >= goal if goal else r > 1),
                    }
                )
        fp32, int8 = (_find(recs, backend="max", precision=p, audio=lecture) for p in ("fp32", "int8"))
        if fp32 and int8:
            r = ratio(int8.tokens_per_s, fp32.tokens_per_s)
            targets.append(
                {
                    "kind": "decoder",
                    "device": device,
                    "model": model,
                    "audio": lecture,
                    "max_precision": "int8",
                    "versus": "MAX fp32",
                    "max_tokens_per_s": int8.tokens_per_s,
                    "versus_tokens_per_s": fp32.tokens_per_s,
                    "ratio": r,
                    "target": f">= {DECODER_TARGET}x",
                    "met": r is not None and r >= DECODER_TARGET,
                }
            )
        ref_clips = sorted(c for c in clips if c in references)
        for mp in max_precisions:
            op = mp if _find(recs, backend="openai", precision=mp) else "fp32"
            pairs_max, pairs_openai = [], []
            for c in ref_clips:
                m = _find(recs, backend="max", precision=mp, audio=c)
                o = _find(recs, backend="openai", precision=op, audio=c)
                if m and o:
                    pairs_max.append((references[c], m.text))
                    pairs_openai.append((references[c], o.text))
            if not pairs_max:
                continue
            wm, wo = pooled_wer(pairs_max), pooled_wer(pairs_openai)
            delta = None if wm is None or wo is None else 100 * (wm - wo)
            targets.append(
                {
                    "kind": "wer",
                    "device": device,
                    "model": model,
                    "audio": ref_clips[: len(pairs_max)]
                    if len(pairs_max) == len(ref_clips)
                    else [c for c in ref_clips if _find(recs, backend="max", precision=mp, audio=c)],
                    "max_precision": mp,
                    "versus": implementation_label("openai", op),
                    "max_wer": wm,
                    "versus_wer": wo,
                    "delta_points": delta,
                    "target": f"<= +{WER_TARGET_POINTS} points",
                    "met": delta is not None and delta <= WER_TARGET_POINTS + 1e-9,
                }
            )
    return targets


def add_batched_accuracy(doc: dict) -> None:
    """Fills each row's wer (against the pseudo-reference), and whether it is token for token its
    implementation's batch-1 transcript."""
    t = doc["throughput"]
    reference = pseudo_reference(t["audio"])
    for run in t["runs"]:
        first = next((r for r in run["rows"] if "error" not in r), None)
        for r in run["rows"]:
            if "error" in r:
                continue
            r["wer"] = wer(reference, r["text"]) if reference else None
            r["same_tokens_as_first"] = r["chunk_tokens"] == first["chunk_tokens"]
