"""The benchmark's outputs: Markdown tables and reports, target lines, Plotly charts, and the files
a run writes (JSON, Markdown, HTML), for the per-clip runs and the batched mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..registry import color
from .records import SHORT_CLIP, current_names, ratio


def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}{suffix}"


def ratio_text(x: float | None, target: float) -> str:
    """A speed ratio to two decimals, or to as many more as it takes (cut, not rounded) not to show a
    ratio under `target` as reaching it: 1.2975 against 1.3 is "1.297", not "1.30"."""
    if x is None or not math.isfinite(x):
        return "–"
    digits = 2
    while x < target <= round(x, digits):
        digits += 1
    return f"{x:.2f}" if digits == 2 else f"{math.floor(x * 10**digits) / 10**digits:.{digits}f}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def markdown_table(records: list[dict]) -> str:
    """One row per result; an older file's results too (`records.current_names`)."""
    header = [
        "audio",
        "implementation",
        "load s",
        "compile s",
        "total s (median)",
        "min–max s",
        "features s",
        "encode s",
        "decode s",
        "RTFx",
        "tokens/s",
        "peak RSS MiB",
        "WER %",
        "agreement %",
        "= openai tokens",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 3) + [":---:"]) + "|",
    ]
    for r in map(current_names, records):
        same = {True: "yes", False: "no", None: "–"}[r.get("tokens_identical_to_openai")]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['audio']} ({r['audio_s']:.1f} s)",
                    r["implementation"],
                    _f(r["load_s"]),
                    _f(r["compile_s"]),
                    _f(r["total_s_median"], 3),
                    f"{_f(r['total_s_min'], 3)}–{_f(r['total_s_max'], 3)}",
                    _f(r["features_s"], 3),
                    _f(r["encode_s"], 3),
                    _f(r["decode_s"], 3),
                    _f(r["rtfx"], 1),
                    _f(r["tokens_per_s"], 0),
                    _f(r["peak_rss_mib"], 0),
                    _pct(r["wer"]),
                    _pct(r["agreement"]),
                    same,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def targets_text(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        ok = "MET" if t["met"] else "NOT MET"
        head = f"[{t['device']} {t['model']}] "
        if t["kind"] == "speed":
            stand_in = not t["long_form"] and t["audio"] != SHORT_CLIP  # jfk's own target is no stand-in
            what = t["audio"] + (" (no long-form clip in this run: longest clip instead)" if stand_in else "")
            lines.append(
                f"{head}speed on {what}: MAX {t['max_precision']} {t['max_total_s']:.3f} s vs "
                f"{t['versus']} {t['versus_total_s']:.3f} s -> ratio {_f(t['ratio'])} "
                f"(target {t['target']}): {ok}"
            )
        elif t["kind"] == "decoder":
            lines.append(
                f"{head}decoder tokens/s on {t['audio']}: MAX {t['max_precision']} "
                f"{_f(t['max_tokens_per_s'], 0)} vs {t['versus']} {_f(t['versus_tokens_per_s'], 0)} -> "
                f"ratio {_f(t['ratio'])} (target {t['target']}): {ok}"
            )
        else:
            lines.append(
                f"{head}WER on {', '.join(t['audio'])} (pooled): MAX {t['max_precision']} "
                f"{_pct(t['max_wer'], 2)}% vs {t['versus']} {_pct(t['versus_wer'], 2)}% -> "
                f"delta {_f(t['delta_points'], 2)} points (target {t['target']}): {ok}"
            )
    return "\n".join(lines)


def markdown_report(doc: dict) -> str:
    m, v, o = doc["machine"], doc["versions"], doc["options"]
    lines = [
        f"# MAX-Whisper benchmark: {doc['device']} ({m['gpu'] if doc['device'] == 'gpu' else m['cpu']})",
        "",
        (
            f"Created {doc['created']}{' (quick mode)' if o.get('quick') else ''}. Machine: {m['cpu']}, "
            f"{m['cores']} logical cores, {m['ram_gib']} GiB RAM"
            + (f", {m['vector_isa']}" if m.get("vector_isa") else "")
            + (f", GPU {m['gpu']}" if m.get("gpu") else "")
            + f"; load average at start {m.get('load_average')}."
        ),
        (
            f"Threads: {o['threads']} for every implementation. "
            + (f"{o['rounds']} rounds, implementations in turn, each " if o.get("rounds", 1) > 1 else "")
            + f"{o['repeats']} timed run(s) after 1 warm-up per clip; "
            f"decoding: beam {o['decode']['beam_size']}, temperature fallback {o['decode']['temperature']}."
            + (
                f" Background load: {o['background_load']} core(s) kept busy by spinning processes."
                if o.get("background_load")
                else ""
            )
        ),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        (
            "RTFx = audio seconds / median processing second (the inverse real-time factor; higher is faster). "
            "Stage columns are medians; load/compile are one-time costs, not in total. WER: EnglishTextNormalizer "
            "+ jiwer against the MANIFEST references; agreement: 1 − WER against openai-whisper's transcript on the "
            "same device."
        ),
        "",
        markdown_table(doc["results"]),
    ]
    if doc["targets"]:
        lines += ["", "## Targets", ""] + [f"- {line}" for line in targets_text(doc["targets"]).splitlines()]
    if doc["failures"]:
        lines += ["", "## Failures", ""] + [
            f"- {f.get('backend')} {f.get('precision')} {f.get('device')}"
            + (f" on {f['audio']}" if f.get("audio") else "")
            + f": {f['error']}"
            for f in doc["failures"]
        ]
    return "\n".join(lines) + "\n"


def write_html(doc: dict, path: Path) -> None:
    """Per clip: stacked median stage bars per implementation, and the RTFx (audio s per processing s)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = [current_names(r) for r in doc["results"]]
    clips = list(dict.fromkeys(r["audio"] for r in records))
    titles = []
    for c in clips:
        audio_s = next(r["audio_s"] for r in records if r["audio"] == c)
        titles += [
            f"{c} ({audio_s:.1f} s): median time per stage, s",
            f"{c}: RTFx, audio s per processing s (higher is faster)",
        ]
    fig = make_subplots(
        rows=max(len(clips), 1),
        cols=2,
        subplot_titles=titles,
        horizontal_spacing=0.22,
        vertical_spacing=0.35 / max(len(clips), 1),
    )
    colors = {"features": "#8fbcd4", "encode": "#3b75af", "decode": "#ef8636", "other": "#c5c5c5"}
    for i, c in enumerate(clips, start=1):
        recs = [r for r in records if r["audio"] == c]
        names = [r["implementation"] for r in recs]
        stages = {
            "features": [r["features_s"] or 0.0 for r in recs],
            "encode": [r["encode_s"] or 0.0 for r in recs],
            "decode": [r["decode_s"] or 0.0 for r in recs],
        }
        stages["other"] = [
            max(r["total_s_median"] - sum(s[j] for s in stages.values()), 0.0) for j, r in enumerate(recs)
        ]
        for stage, values in stages.items():
            fig.add_trace(
                go.Bar(
                    y=names,
                    x=values,
                    name=stage,
                    orientation="h",
                    legendgroup=stage,
                    showlegend=i == 1,
                    marker_color=colors[stage],
                    hovertemplate="%{y}: " + stage + " %{x:.3f} s<extra></extra>",
                ),
                row=i,
                col=1,
            )
        fig.add_trace(
            go.Bar(
                y=names,
                x=[r["rtfx"] for r in recs],
                orientation="h",
                name="RTFx",
                showlegend=False,
                marker_color="#4c9a2a",
                text=[_f(r["rtfx"], 1) + "×" for r in recs],
                textposition="auto",
                hovertemplate="%{y}: %{x:.1f}× real time<extra></extra>",
            ),
            row=i,
            col=2,
        )
    m = doc["machine"]
    fig.update_layout(
        barmode="stack",
        height=320 * max(len(clips), 1) + 120,
        template="plotly_white",
        title=f"MAX-Whisper vs openai-whisper vs faster-whisper: {doc['device']} "
        f"({m['gpu'] if doc['device'] == 'gpu' else m['cpu']}, {m['cores']} cores), {doc['created']}",
        legend={"orientation": "h", "y": -0.04 if clips else 0},
    )
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)


def write_mode_report(doc: dict, markdown: str, out_dir: Path, stem: str) -> None:
    """A mode's (streaming, service, bulk) results: <stem>.json and its markdown, printed too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out_dir / stem}.{{json,md}}")


def write_outputs(doc: dict, out_dir: Path, stem: str, html: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    paths["md"].write_text(markdown_report(doc))
    if html:
        paths["html"] = out_dir / f"{stem}.html"
        write_html(doc, paths["html"])
    return paths


def batched_targets(doc: dict) -> list[str]:
    """The batched mode's targets: MAX at batch 8 vs faster-whisper's pipeline at batch 8 (speed >=
    2.5x, WER within 0.5 points), and MAX's batch 8 vs its own batch 1 (>= 1.3x)."""

    def row(backend, batch):
        run = next((r for r in doc["throughput"]["runs"] if r["backend"] == backend and r["precision"] == "fp32"), None)
        return next((x for x in run["rows"] if x["batch_size"] == batch and "error" not in x), None) if run else None

    m8, m1, f8 = row("max", 8), row("max", 1), row("faster", 8)
    lines = []
    if m8 and f8:
        r = ratio(f8["total_s_median"], m8["total_s_median"])
        lines.append(
            f"batch 8: MAX {m8['total_s_median']:.2f} s vs faster-whisper fp32 {f8['total_s_median']:.2f} s "
            f"-> {_f(r)}x (target >= 2.5x): {'MET' if r and r >= 2.5 else 'NOT MET'}"
        )
        if m8.get("wer") is not None and f8.get("wer") is not None:
            d = 100 * (m8["wer"] - f8["wer"])
            lines.append(
                f"batch 8 WER vs whisper-medium: MAX {_pct(m8['wer'], 2)}% vs faster-whisper "
                f"{_pct(f8['wer'], 2)}% -> {d:+.2f} points (target within 0.5): "
                f"{'MET' if abs(d) <= 0.5 else 'NOT MET'}"
            )
    if m8 and m1:
        r = ratio(m1["total_s_median"], m8["total_s_median"])
        lines.append(f"MAX batch 8 vs batch 1: {_f(r)}x (target >= 1.3x): {'MET' if r and r >= 1.3 else 'NOT MET'}")
    return lines


def throughput_markdown(doc: dict) -> str:
    t, m = doc["throughput"], doc["machine"]
    lines = [
        f"# Batched long-form transcription: {doc['device']}, {t['model']}",
        "",
        f"{t['audio']} ({t['audio_s']:.1f} s), transcribed with `--batch-size N`: Silero VAD speech chunks of at most "
        "30 s, decoded N at a time without the previous text as prompt (MAX: `maxwhisper.batched`; faster-whisper: "
        "its `BatchedInferencePipeline`, the same VAD). Greedy. Time is the whole call: VAD, log-Mel, encoder and "
        f"decoder; median of {doc['options']['repeats']} run(s) after one warm-up. WER against the clip's "
        "whisper-medium transcript (a pseudo-reference: model output). "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('vector_isa') or 'unknown ISA'}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + "."
        + (
            f" Background load: {doc['options']['background_load']} core(s) kept busy by spinning processes."
            if doc["options"].get("background_load")
            else ""
        ),
        "",
        "| implementation | batch | chunks | total s (median) | min–max s | encode s | decode s | audio s / s "
        "| × own first | WER % | = own first | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for run in t["runs"]:
        first = next((r for r in run["rows"] if "error" not in r), None)
        for r in run["rows"]:
            if "error" in r:
                lines.append(
                    f"| {run['implementation']} | {r['batch_size']} | | FAILED: {r['error']} | | | | | | | | |"
                )
                continue
            same = {True: "yes", False: "no", None: "–"}[r.get("same_tokens_as_first")]
            lines.append(
                f"| {run['implementation']} | {r['batch_size']} | {r['n_chunks']} | {_f(r['total_s_median'], 2)} | "
                f"{_f(r['total_s_min'], 2)}–{_f(r['total_s_max'], 2)} | {_f(r['encode_s'], 2)} | "
                f"{_f(r['decode_s'], 2)} | {_f(r['audio_s_per_s'], 1)} | "
                f"{_f(ratio(first['total_s_median'], r['total_s_median']), 2)} | {_pct(r.get('wer'), 2)} | {same} | "
                f"{_f(r['peak_rss_mib'], 0)} |"
            )
    for f in doc.get("failures", []):
        lines.append(f"| {f['implementation']} | | | FAILED: {f['error']} | | | | | | | | |")
    targets = batched_targets(doc)
    if targets:
        lines += ["", "Targets:", ""] + [f"- {x}" for x in targets]
    return "\n".join(lines) + "\n"


def write_throughput_html(doc: dict, path: Path) -> None:
    import plotly.graph_objects as go

    t = doc["throughput"]
    fig = go.Figure()
    for run in t["runs"]:
        rows = [r for r in run["rows"] if "error" not in r]
        fig.add_trace(
            go.Bar(
                name=run["implementation"],
                x=[str(r["batch_size"]) for r in rows],
                y=[r["audio_s_per_s"] for r in rows],
                text=[_f(r["audio_s_per_s"], 1) for r in rows],
                textposition="auto",
                marker_color=color(run["backend"]),
            )
        )
    fig.update_layout(
        template="plotly_white",
        barmode="group",
        xaxis_title="batch size (speech chunks)",
        yaxis_title="audio seconds per second",
        title=f"Batched long-form, {t['model']} on {doc['device']} "
        f"({doc['machine']['gpu'] or doc['machine']['cpu']}), {t['audio']}",
    )
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)
