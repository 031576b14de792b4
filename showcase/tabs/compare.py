"""The Compare tab: on the left a clip (the first example already in the box), the implementations
to race, one Run button and the options, folded (Run folds them and, on a phone, the page scrolls
to the results); on the right, beside them so that open options push nothing down, the results: the verdict,
the speed chart and the transcripts side by side, each panel saying whether it waits, runs (how far)
or is done. The details (timestamps, word differences, downloads, time by stage) fold away under
them. `showcase.comparison` runs the race through the page's `Transcriptions`."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from maxwhisper.api import DecodeOptions
from maxwhisper.registry import BACKENDS
from maxwhisper.tokenizer import LANGUAGES

from ..audio_checks import refusal
from ..charts import short_name, speed_value, stage_bars, time_bars
from ..choices import Choices
from ..comparison import ROUND_LIMIT_S, Comparison, Panel, run_comparison, unheard_tail, watch
from ..cpu_load import BUSY_CORES, available_cores
from ..examples import example_rows, reference_for_new_audio
from ..formatting import label, panel_title
from ..language_check import HeardLanguages, detector_for
from ..results import RESULTS_DIR
from ..transcriptions import Transcriptions
from ..verdict import benchmark_note, fair_measure, verdict_html

ABOUT = (
    "The three implementations run OpenAI's Whisper with the same weights (one CTranslate2 package, converted once "
    "for MAX and openai-whisper) and the same decoding options on the same audio; MAX must give openai-whisper's "
    "tokens, and the verdict says whether it did. They take turns on the CPU, one transcription at a time, other "
    "visitors' runs too. A clip of 30 s or less is run three times by each, in turns, and each one's best time "
    "counts, so that a burst of other work does not decide the verdict; a longer clip is run once, and so is one "
    f"whose first round took over {ROUND_LIMIT_S:.0f} s (a larger model, beams, a busy machine). During each run "
    "the app measures its wall-clock time, the CPU seconds the run's own work took, and how much of the CPU other "
    "programs took. Where the CPU was otherwise quiet, the verdict compares wall-clock times; where other programs "
    "kept cores busy, which stretches wall-clock times by chance, it compares CPU time, and says so. Times leave "
    "out loading and compiling the models. An English-only model is not raced on another language: the multilingual "
    "model hears it first. The Benchmarks tab holds medians of quiet machines; docs/app.md describes the page."
)
RUNS_AT_ONCE = 16  # requests inside the app at once: they take turns (`Transcriptions`) and see their place


def panel_head(panel: Panel | None, backend: str, rounds: int = 1) -> str:
    """HTML over an implementation's transcript: its name, then its state with what it does (and a
    progress bar) while it runs, its time once done, or why it failed. The state opens the second
    line, so that the longest name keeps one line and the three transcripts start level."""
    state = panel.state if panel else "waiting"
    chip = f"<span class='chip chip-{state}'>{state}</span> "
    if panel and state == "running":
        run = len(panel.runs) + 1
        doing = f"timing run {run} of {rounds}" if run > 1 else panel.doing
        line = (
            f"<div class='meta'>{chip}{html.escape(doing)}</div>"
            f"<div class='progress'><div style='width:{100 * panel.fraction:.0f}%'></div></div>"
        )
    elif panel and panel.runs:
        best, r = panel.best, panel.result
        shared = best.shared_cpu or (best.other_cores or 0.0) >= BUSY_CORES
        cpu = f" · {panel.cheapest.cpu_s:.2f} CPU s" if panel.cheapest else ""
        line = (
            f"<div class='meta'>{chip}{speed_value(best.seconds, r.audio_s)}{cpu} · "
            f"{r.precision} · {r.language}{' · ⚠ CPU shared' if shared else ''}</div>"
        )
    elif panel and panel.error:
        line = f"<div class='meta error'>{chip}{html.escape(panel.error)}</div>"
    else:
        line = f"<div class='meta'>{chip}</div>"
    return panel_title(backend, line)


def message_text(comparison: Comparison | None, elapsed: float) -> str:
    """The line over the results: the request's problem, what runs, or what ran."""
    if comparison is None:
        return f"Starting… ({elapsed:.0f} s)"
    if comparison.message:
        return comparison.message
    what = f"{comparison.audio_s:.1f} s of audio, {comparison.model} on {comparison.device}"
    if comparison.checking:
        return f"{comparison.checking} · {elapsed:.0f} s"
    if not comparison.finished:
        rounds = f" of {comparison.rounds}" if comparison.round > 1 else ""
        return f"Running: {what} · round {comparison.round}{rounds} · {elapsed:.0f} s"
    text = f"Finished: {what}, in {elapsed:.0f} s."
    failed = [label(b) for b, p in comparison.panels.items() if p.error]
    if failed:
        text += f" ⚠ Failed: {', '.join(failed)} (its panel says why)."
    if comparison.results and not any(r.text.strip() for r in comparison.results.values()):
        text += " No speech was found in this audio: there was nothing to transcribe."
    return text + unheard_tail(comparison)


def options_label(model: str, precision: str, device: str, beam_size: int) -> str:
    return f"Options: {model} · {precision} · {device} · {'greedy' if beam_size == 1 else f'beam {beam_size}'}"


@dataclass(frozen=True)
class CompareTab:
    run: gr.Button  # starts a comparison
    message: gr.Markdown  # the run's progress line: changes at once when a run starts, then every second
    model: gr.Dropdown  # the chosen model and device, which the Component tests tab uses too
    device: gr.Radio


def build(transcriptions: Transcriptions, choices: Choices, max_seconds: float) -> CompareTab:
    """The tab and its handlers, inside the page's gr.Blocks."""
    model0 = choices.models[0] if choices.models else None
    examples = example_rows(choices.models) if choices.models else []
    first = examples[0] if examples else (None, "", model0, "")  # in the box as the page opens: one click to a result
    detector = detector_for(choices.models, choices.backends)
    heard = HeardLanguages()  # a clip run again is not heard again
    with gr.Tab("Compare"):
        with gr.Row(equal_height=False, elem_id="compare"):
            with gr.Column(scale=2, min_width=300, elem_id="inputs"):
                audio = gr.Audio(
                    first[0],
                    sources=["upload", "microphone"],
                    type="filepath",
                    elem_id="audio",
                    label=f"Audio (up to {max_seconds:g} s)",
                )
                with gr.Row(elem_id="examples", equal_height=True):
                    example_buttons = [
                        (gr.Button(button, size="sm", variant="secondary", min_width=100), path, model, text)
                        for path, button, model, text in examples
                    ]
                chosen = gr.CheckboxGroup(
                    [(short_name(b), b) for b in choices.backends],
                    value=choices.backends,
                    label="Implementations to race",
                    elem_id="chosen",
                )
                run = gr.Button("Run", variant="primary", elem_id="run", size="lg")
                model_note = gr.Markdown(elem_id="model-note")
                with gr.Accordion(
                    options_label(first[2], "fp32", choices.default_device, 1), open=False, elem_id="options"
                ) as options:
                    model = gr.Dropdown(choices.models, value=first[2], label="Model (installed)")
                    precision = gr.Radio(
                        choices.precisions,
                        value="fp32",
                        label="Precision",
                        info=(
                            "int8 and bf16 are MAX's (int8: faster-whisper's too); openai-whisper stays fp32"
                            if "bf16" in choices.precisions
                            else "int8 is MAX's and faster-whisper's; openai-whisper stays fp32"
                        ),
                    )
                    device = gr.Radio(
                        ["auto", "cpu", "gpu"] if choices.gpu else ["auto", "cpu"],
                        value="auto",
                        label="Device",
                        info=f"auto = {choices.default_device}",
                    )
                    language = gr.Dropdown(
                        [("auto (detect; English for .en models)", "auto")]
                        + [(f"{name} ({code})", code) for code, name in LANGUAGES.items()],
                        value="auto",
                        label="Language",
                    )
                    task = gr.Radio(
                        ["transcribe", "translate"],
                        value="transcribe",
                        label="Task",
                        info="translate: into English, with a multilingual model (base)",
                    )
                    reference_text = gr.Textbox(
                        first[3],
                        label="Reference text, for each implementation's WER",
                        lines=2,
                        elem_id="reference",
                        placeholder="what is said in the audio",
                    )
                    beam_size = gr.Slider(1, 5, value=1, step=1, label="Beam size (1 = greedy)")
                    with gr.Row():
                        timestamps = gr.Checkbox(True, label="Segment timestamps")
                        word_timestamps = gr.Checkbox(False, label="Word timestamps")
                    initial_prompt = gr.Textbox(
                        label="Initial prompt", lines=1, placeholder="words or spellings to steer the first window"
                    )
                    condition = gr.Checkbox(True, label="Condition on previous text")
                    silence = gr.Number(
                        0, minimum=0, label="Hallucination silence threshold, s (0 = off; needs word timestamps)"
                    )
                    batch = gr.Dropdown(
                        [("off: 30 s windows in sequence, as openai-whisper", 0), 2, 4, 8, 16],
                        value=0,
                        label="Batched long-form: speech chunks at a time",
                        info="MAX and faster-whisper only",
                    )
                    # the audio box drops a video/* file (.webm, .mp4) silently: this button puts its path there
                    video = gr.UploadButton(
                        "Upload a video file (its sound is transcribed)",
                        file_types=["video", "audio"],
                        size="sm",
                        variant="secondary",
                        elem_id="video-upload",
                    )
            with gr.Column(scale=3, min_width=300, elem_id="results"):
                message = gr.Markdown(elem_id="message")
                suggest = gr.Button(
                    f"Transcribe it with {detector[1]}" if detector else "",
                    visible=False,
                    variant="primary",
                    elem_id="suggest",
                )
                verdict = gr.HTML(
                    f"<p class='note'>Press Run: the verdict appears here. {benchmark_note(RESULTS_DIR)}</p>",
                    elem_id="verdict",
                    min_height=0,
                )
                heads, texts, columns = {}, {}, {}
                with gr.Row(equal_height=False, elem_id="panels"):
                    for b in BACKENDS:
                        with gr.Column(visible=b in choices.backends, min_width=200) as columns[b]:
                            heads[b] = gr.HTML(panel_head(None, b), elem_id=f"state-{b}", min_height=0)
                            texts[b] = gr.Textbox(
                                show_label=False,
                                lines=3,
                                max_lines=8,
                                elem_id=f"text-{b}",
                                buttons=["copy"],
                                placeholder="the transcript appears here",
                                container=False,
                            )
                chart = gr.HTML(elem_id="chart", min_height=0)
        with gr.Accordion(
            "Details: timestamps, word differences, downloads, time by stage", open=False, elem_id="details"
        ):
            stages = gr.HTML(min_height=0)
            details = {}
            with gr.Row(equal_height=False):
                for b in BACKENDS:
                    with gr.Column(min_width=240):
                        gr.HTML(panel_title(b), min_height=0)
                        details[b] = (
                            gr.HTML(elem_id=f"diff-{b}", min_height=0),
                            gr.Textbox(label="Segments", lines=3, max_lines=12, elem_id=f"segments-{b}"),
                            gr.File(
                                label="TXT / SRT / VTT", file_count="multiple", interactive=False, elem_id=f"files-{b}"
                            ),
                        )
        with gr.Accordion("About the race", open=False):
            gr.Markdown(ABOUT)

    panel_outputs = [x for b in BACKENDS for x in (columns[b], heads[b], texts[b], *details[b])]
    cores = available_cores()

    def shown(comparison: Comparison | None, elapsed: float, chosen_now: list[str]) -> list:
        outputs = [message_text(comparison, elapsed), gr.Button(visible=bool(comparison and comparison.suggestion))]
        if comparison is None or comparison.message:  # starting, or a problem with the request: nothing ran
            outputs += ["", "", ""]
        else:
            done = [p for p in comparison.panels.values() if p.runs]
            cpu = comparison.finished and len(done) > 1 and fair_measure(done, cores).kind == "cpu"
            outputs += [verdict_html(comparison, cores), time_bars(comparison, cpu), stage_bars(comparison)]
        for b in BACKENDS:
            p = comparison.panels.get(b) if comparison else None
            rounds = comparison.rounds if comparison else 1
            outputs += [
                gr.Column(visible=b in chosen_now),
                panel_head(p, b, rounds),
                p.text if p else "",
                p.diff_html if p else "",
                p.segments if p else "",
                (p.files or None) if p else None,
            ]
        return outputs

    def transcribe(
        audio,
        chosen,
        model,
        device,
        precision,
        language,
        task,
        beam_size,
        timestamps,
        word_timestamps,
        initial_prompt,
        condition,
        silence,
        batch,
        reference_text,
    ):
        yield shown(None, 0.0, chosen)  # at once: the previous run's results go

        def run(on_change):  # inside watch: bad option values become the run's message
            options = DecodeOptions.from_values(
                {
                    "language": language,
                    "task": task,
                    "beam_size": int(beam_size),
                    "without_timestamps": not timestamps,
                    "word_timestamps": word_timestamps,
                    "initial_prompt": initial_prompt,
                    "condition_on_previous_text": condition,
                    "hallucination_silence_threshold": float(silence) if silence else None,
                    "batch_size": int(batch),
                }
            )
            return run_comparison(
                audio,
                chosen,
                model,
                choices.device(device),
                options,
                transcriptions,
                precision=precision,
                max_seconds=max_seconds,
                reference_text=reference_text,
                detector=detector,
                heard=heard,
                on_change=on_change,
            )

        for comparison, elapsed in watch(run):
            yield shown(comparison, elapsed, chosen)

    results = [message, suggest, verdict, chart, stages, *panel_outputs]

    def note(chosen_now, model_now, device_now, precision_now):
        return transcriptions.load_note(chosen_now, model_now, choices.device(device_now), precision_now)

    note_inputs = [chosen, model, device, precision]
    run_inputs = [
        audio,
        chosen,
        model,
        device,
        precision,
        language,
        task,
        beam_size,
        timestamps,
        word_timestamps,
        initial_prompt,
        condition,
        silence,
        batch,
        reference_text,
    ]
    run.click(transcribe, run_inputs, results, concurrency_limit=RUNS_AT_ONCE, show_progress="hidden").then(
        note, note_inputs, model_note, concurrency_limit=None, show_progress="hidden"
    )  # what the run loaded
    run.click(  # the results in sight on a narrow screen, where they come after the options
        lambda: gr.Accordion(open=False), outputs=options, concurrency_limit=None, show_progress="hidden"
    )
    if detector:  # the language check's suggestion: the multilingual model, then the run
        suggest.click(lambda: detector[1], outputs=model, concurrency_limit=None, show_progress="hidden").then(
            transcribe, run_inputs, results, concurrency_limit=RUNS_AT_ONCE, show_progress="hidden"
        )
    # other audio in the box: an example's reference text goes with its clip (a WER against it means nothing)
    video.upload(
        lambda path, text: (path, reference_for_new_audio(text)),
        [video, reference_text],
        [audio, reference_text],
        show_progress="hidden",
    )
    audio.upload(
        lambda path, text: (refusal(path, max_seconds), reference_for_new_audio(text)),
        [audio, reference_text],
        [message, reference_text],
        show_progress="hidden",
        concurrency_limit=None,
    )  # at once
    audio.stop_recording(
        reference_for_new_audio, reference_text, reference_text, show_progress="hidden", concurrency_limit=None
    )
    audio.clear(
        lambda text: ("", reference_for_new_audio(text)),
        reference_text,
        [message, reference_text],
        show_progress="hidden",
        concurrency_limit=None,
    )
    for button, path, example_model, text in example_buttons:  # (the message: an upload's refusal goes)
        button.click(
            lambda path=path, m=example_model, text=text: (path, m, text, ""),
            outputs=[audio, model, reference_text, message],
            concurrency_limit=None,
            show_progress="hidden",
        )
    for control in (model, precision, device, beam_size):
        control.change(
            lambda m, p, d, beam: gr.Accordion(label=options_label(m, p, choices.device(d), int(beam))),
            [model, precision, device, beam_size],
            options,
            concurrency_limit=None,
            show_progress="hidden",
        )
    for control in (model, device, precision, chosen):  # say before a run what it will have to load or compile
        control.change(note, note_inputs, model_note, concurrency_limit=None, show_progress="hidden")
    return CompareTab(run, message, model, device)
