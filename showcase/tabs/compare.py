"""The Transcribe & compare tab: one recording through each chosen implementation, side by side:
transcripts, word diffs, WER, charts, downloads and a headline (`showcase.comparison` runs it,
through the page's `Transcriptions`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from maxwhisper.api import DecodeOptions
from maxwhisper.registry import BACKENDS
from maxwhisper.tokenizer import LANGUAGES

from ..choices import Choices
from ..comparison import Comparison, Panel, run_comparison, watch
from ..formatting import label
from ..headlines import benchmark_headline
from ..results import RESULTS_DIR
from ..transcriptions import Transcriptions

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
EXAMPLES = (  # (clip in examples/, the model it shows best, reference text); see examples/README.md
    ("jfk.flac", "tiny.en", JFK_TEXT),
    ("physicsworks-excerpt.flac", "tiny.en", ""),
    ("multilingual.mp3", "base", ""),
)
RUNS_AT_ONCE = 16  # requests inside the app at once: they take turns (`Transcriptions`) and see their place


def example_rows(models: list[str]) -> list[list]:
    """[clip path, model, reference text] for each clip in examples/, with the default model where the
    clip's model is not installed."""
    return [[str(EXAMPLES_DIR / name), model if model in models else models[0], text]
            for name, model, text in EXAMPLES if (EXAMPLES_DIR / name).is_file()]


@dataclass(frozen=True)
class CompareTab:
    run: gr.Button  # starts a comparison
    model: gr.Dropdown  # the chosen model and device, which the Component tests tab uses too
    device: gr.Radio


def build(transcriptions: Transcriptions, choices: Choices, max_seconds: float) -> CompareTab:
    """The tab and its handlers, inside the page's gr.Blocks."""
    with gr.Tab("Transcribe & compare"):
        committed = benchmark_headline(RESULTS_DIR)
        headline = gr.Markdown(committed, elem_id="headline")
        with gr.Row():
            with gr.Column(scale=3):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="audio",
                                 label=f"Audio (upload or record, up to {max_seconds:g} s)")
                # the audio box drops a file whose browser type is video/* (a .webm, .mp4, .mkv) without
                # a word; the run decodes any file with FFmpeg, so a video's path goes into the box. The
                # button takes audio too: one limited to video drops an audio file without a word
                video = gr.UploadButton("…or upload a video file (its sound is transcribed)",
                                        file_types=["video", "audio"], size="sm", variant="secondary",
                                        elem_id="video-upload")
                video.upload(lambda path: path, inputs=video, outputs=audio, show_progress="hidden")
                reference_text = gr.Textbox(label="Reference text (optional)", lines=2,
                                            placeholder="Paste what is said to get each implementation's WER")
                run = gr.Button("Transcribe with each implementation", variant="primary", elem_id="run")
                progress = gr.Markdown(elem_id="progress")
            with gr.Column(scale=2):
                chosen = gr.CheckboxGroup([(label(b), b) for b in choices.backends], value=choices.backends,
                                          label="Implementations")
                model = gr.Dropdown(choices.models, value=choices.models[0] if choices.models else None,
                                    label="Model (installed)")
                model_note = gr.Markdown(elem_id="model-note")
                device = gr.Radio(["auto", "cpu", "gpu"] if choices.gpu else ["auto", "cpu"], value="auto",
                                  label="Device", info=f"auto = {choices.default_device}" + (
                                      "" if choices.gpu else "; GPU disabled: MAX sees no GPU on this machine"))
                precision = gr.Radio(choices.precisions, value="fp32", label="Precision",
                                     info="int8: MAX and faster-whisper with int8 weights on the CPU (MAX int8 "
                                          "against faster-whisper int8); openai-whisper stays fp32"
                                          + ("; bf16 (CPUs with AVX512_BF16): MAX's encoder and prompt linears in "
                                             "bfloat16, the others in fp32" if "bf16" in choices.precisions else ""))
                language = gr.Dropdown([("auto (detect; English for .en models)", "auto")] +
                                       [(f"{name} ({code})", code) for code, name in LANGUAGES.items()],
                                       value="auto", label="Language")
                task = gr.Radio(["transcribe", "translate"], value="transcribe", label="Task")
                beam_size = gr.Slider(1, 5, value=1, step=1, label="Beam size (1 = greedy)")
                with gr.Row():
                    timestamps = gr.Checkbox(True, label="Segment timestamps")
                    word_timestamps = gr.Checkbox(False, label="Word timestamps")
                with gr.Accordion("More decoding options", open=False):
                    initial_prompt = gr.Textbox(label="Initial prompt", lines=1,
                                                placeholder="words or spellings to steer the first window")
                    condition = gr.Checkbox(True, label="Condition on previous text")
                    silence = gr.Number(0, minimum=0, label="Hallucination silence threshold, s (0 = off; "
                                                            "needs word timestamps)")
                    batch = gr.Dropdown([("off: 30 s windows in sequence, as openai-whisper", 0), 2, 4, 8, 16],
                                        value=0, label="Batched long-form: speech chunks at a time",
                                        info="Silero VAD chunks decoded together, no previous text as prompt "
                                             "(MAX and faster-whisper; openai-whisper has no such mode)")
        examples = example_rows(choices.models) if choices.models else []
        if examples:
            gr.Examples(examples, inputs=[audio, model, reference_text], elem_id="examples",
                        label="Examples (examples/: sources and licences in examples/README.md)",
                        cache_examples=False)
        message = gr.Markdown(elem_id="message")
        panel_outputs = []
        with gr.Row(equal_height=False):
            for b in BACKENDS:
                with gr.Column(visible=False, min_width=260) as column:
                    gr.Markdown(f"### <span style='color:{BACKENDS[b].color}'>{label(b)}</span>")
                    panel_outputs += [
                        column,
                        gr.Markdown(elem_id=f"summary-{b}"),
                        gr.Textbox(label="Transcript", lines=3, max_lines=12, elem_id=f"text-{b}", buttons=["copy"]),
                        gr.Textbox(label="Segments", lines=3, max_lines=12, elem_id=f"segments-{b}"),
                        gr.HTML(),
                        gr.File(label="Download TXT / SRT / VTT", file_count="multiple", interactive=False,
                                elem_id=f"files-{b}"),
                    ]
        timing_plot = gr.Plot(show_label=False, visible=False, elem_id="timing-plot")
        rtfx_plot = gr.Plot(show_label=False, visible=False, elem_id="rtfx-plot")

    def shown(result: Comparison, line: str) -> list:
        outputs = [result.message]
        for b in BACKENDS:
            p = result.panels.get(b, Panel(b))
            outputs += [gr.Column(visible=b in result.panels), p.summary, p.text, p.segments, p.diff_html,
                        p.files]
        plots = [gr.Plot(fig, visible=fig is not None) for fig in (result.timing_figure, result.rtfx_figure)]
        finished = not line  # watch's last update: a run without MAX and another has no headline of its own
        return [*outputs, *plots, result.headline or (committed if finished else gr.skip())]

    def transcribe(audio, chosen, model, device, precision, language, task, beam_size, timestamps, word_timestamps,
                   initial_prompt, condition, silence, batch, reference_text):
        def run(progress, on_partial):  # inside watch: bad option values become the run's message
            options = DecodeOptions.from_values({
                "language": language, "task": task, "beam_size": int(beam_size), "without_timestamps": not timestamps,
                "word_timestamps": word_timestamps, "initial_prompt": initial_prompt,
                "condition_on_previous_text": condition,
                "hallucination_silence_threshold": float(silence) if silence else None, "batch_size": int(batch)})
            return run_comparison(audio, chosen, model, choices.device(device), options, transcriptions,
                                  precision=precision, max_seconds=max_seconds, reference_text=reference_text,
                                  progress=progress, on_partial=on_partial)

        unchanged = [gr.skip()] * (len(panel_outputs) + 4)
        for line, result in watch(run):
            yield line, *(shown(result, line) if result else unchanged)

    run.click(transcribe, [audio, chosen, model, device, precision, language, task, beam_size, timestamps,
                           word_timestamps, initial_prompt, condition, silence, batch, reference_text],
              [progress, message, *panel_outputs, timing_plot, rtfx_plot, headline],
              concurrency_limit=RUNS_AT_ONCE, show_progress="hidden")
    for control in (model, device, chosen):  # say before a run what it will have to load or compile
        control.change(lambda chosen, model, device: transcriptions.load_note(chosen, model, choices.device(device)),
                       [chosen, model, device], model_note, concurrency_limit=None, show_progress="hidden")
    return CompareTab(run, model, device)
