"""MAX-Whisper showcase: Whisper on Modular's MAX Graph next to openai-whisper and faster-whisper.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--max-seconds 600]

The UI only: the logic lives in the `showcase` package beside it, models come from `maxwhisper.registry`.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")  # offline compiles otherwise wait on it

import gradio as gr  # noqa: E402

from showcase import comparison  # noqa: E402
from showcase.formatting import label  # noqa: E402
from showcase.headlines import benchmark_headline  # noqa: E402
from showcase.models import ModelCache, create_warmed_up, load_record_path, use_persistent_storage  # noqa: E402
from showcase.tabs import benchmarks, checks as checks_tab, live as live_tab, system as system_tab  # noqa: E402
from showcase.turns import Turns  # noqa: E402

use_persistent_storage()  # a Space's /data keeps MAX's compile cache: before max is imported

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.checkpoint import installed_models  # noqa: E402
from maxwhisper.graph.model import gpu_available  # noqa: E402
from maxwhisper.registry import BACKENDS, available_backends  # noqa: E402
from maxwhisper.tokenizer import LANGUAGES  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
EXAMPLES_DIR = ROOT / "examples"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
EXAMPLES = (  # (clip in examples/, the model it shows best, reference text); see examples/README.md
    ("jfk.flac", "tiny.en", JFK_TEXT),
    ("physicsworks-excerpt.flac", "tiny.en", ""),
    ("multilingual.mp3", "base", ""),
)
RUNS_AT_ONCE = 16  # requests inside the app at once: they take turns (showcase.turns.Turns) and see their place
INTRO = """# MAX-Whisper
OpenAI's Whisper re-implemented on [Modular's MAX Graph](https://docs.modular.com/max/), run side by side with
[openai-whisper](https://github.com/openai/whisper) (PyTorch) and
[faster-whisper](https://github.com/SYSTRAN/faster-whisper) (CTranslate2): the same weights, the same decoding
options, the same audio."""


def example_rows(models: list[str]) -> list[list]:
    """[clip path, model, reference text] for each clip in examples/, with the default model where the
    clip's model is not installed."""
    return [[str(EXAMPLES_DIR / name), model if model in models else models[0], text]
            for name, model, text in EXAMPLES if (EXAMPLES_DIR / name).is_file()]


def build_demo(cache: ModelCache, max_seconds: float = 600.0, turns: Turns | None = None,
               checks: checks_tab.ComponentChecks | None = None, live: live_tab.LiveStreams | None = None) -> gr.Blocks:
    turns = turns or Turns()
    checks = checks or checks_tab.ComponentChecks(turns)
    live = live or live_tab.LiveStreams(ModelCache(create_warmed_up))
    gpu = gpu_available()
    default_device = "gpu" if gpu else "cpu"
    models = installed_models()
    backends = available_backends()

    def device_of(choice: str) -> str:
        return default_device if choice == "auto" else choice

    def status() -> str:
        return "  \n".join(part for part in (cache.status(), turns.status()) if part)

    def busy() -> bool:
        return cache.busy() or turns.busy() or checks.running()

    with gr.Blocks(title="MAX-Whisper") as demo:
        gr.Markdown(INTRO)
        status_line = gr.Markdown(status(), elem_id="status")
        timer = gr.Timer(2.0)

        with gr.Tab("Transcribe & compare"):
            committed = benchmark_headline(RESULTS_DIR)
            headline = gr.Markdown(committed, elem_id="headline")
            with gr.Row():
                with gr.Column(scale=3):
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label=f"Audio (upload or record, up to {max_seconds:g} s)")
                    reference_text = gr.Textbox(label="Reference text (optional)", lines=2,
                                                placeholder="Paste what is said to get each implementation's WER")
                    run = gr.Button("Transcribe with each implementation", variant="primary", elem_id="run")
                    progress = gr.Markdown(elem_id="progress")
                with gr.Column(scale=2):
                    chosen = gr.CheckboxGroup([(label(b), b) for b in backends], value=backends,
                                              label="Implementations")
                    model = gr.Dropdown(models, value=models[0] if models else None, label="Model (installed)")
                    model_note = gr.Markdown(elem_id="model-note")
                    device = gr.Radio(["auto", "cpu", "gpu"] if gpu else ["auto", "cpu"], value="auto",
                                      label="Device", info=f"auto = {default_device}" + (
                                          "" if gpu else "; GPU disabled: MAX sees no GPU on this machine"))
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
            examples = example_rows(models) if models else []
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
            rtf_plot = gr.Plot(show_label=False, visible=False, elem_id="rtf-plot")

        with gr.Tab("Live"):
            gr.Markdown("Speak into the microphone: the text appears as you talk. Words turn black once two "
                        "consecutive transcriptions of the audio so far agree on them (LocalAgreement-2) and never "
                        "change after that; the grey tail may still change. Live streams run beside the "
                        "comparisons on models of their own, sharing the CPU with them.")
            with gr.Row():
                live_backend = gr.Radio([(label(b), b) for b in backends], value=backends[0],
                                        label="Implementation", elem_id="live-backend")
                live_model = gr.Dropdown(models, value=models[0] if models else None, label="Model (installed)")
            mic = gr.Audio(sources=["microphone"], type="numpy", streaming=True, label="Microphone",
                           elem_id="live-mic", waveform_options=gr.WaveformOptions(show_recording_waveform=False))
            live_text = gr.HTML(elem_id="live-output")
            live_stats = gr.Markdown(elem_id="live-stats")
            live_session = gr.State(None, delete_callback=lambda s: s.stop(0) if s else None)

        with gr.Tab("Component tests"):
            gr.Markdown("Each MAX component against openai-whisper's PyTorch module built from the same weights "
                        "(`maxwhisper.selfcheck`). They run in the background once the start-up warm-up is done "
                        "(unless the app started with `--no-warm-up`); before each check they wait while "
                        "transcriptions run or wait. The button runs them with the model and device chosen on the "
                        "first tab.")
            checks_message = gr.Markdown(checks.message, elem_id="checks-message")
            checks_table = gr.Dataframe(checks.rows or None, headers=checks_tab.CHECK_HEADERS, interactive=False,
                                        wrap=True)
            checks_again = gr.Button("Run the checks again")

        with gr.Tab("Benchmarks"):
            bench_text = gr.Markdown(elem_id="benchmarks")
            bench_rtf = gr.Plot(show_label=False)
            bench_stages = gr.Plot(show_label=False)
            bench_table = gr.Dataframe(headers=list(benchmarks.BENCH_TABLE.values()), interactive=False, wrap=True,
                                       elem_id="bench-table")

        with gr.Tab("System"):
            system = gr.Markdown(elem_id="system")
            gr.Button("Refresh").click(lambda: system_tab.system_report(cache), outputs=system, concurrency_limit=None)

        def shown(result: comparison.Comparison, line: str) -> list:
            outputs = [result.message]
            for b in BACKENDS:
                p = result.panels.get(b, comparison.Panel(b))
                outputs += [gr.Column(visible=b in result.panels), p.summary, p.text, p.segments, p.diff_html,
                            p.files]
            plots = [gr.Plot(fig, visible=fig is not None) for fig in (result.timing_figure, result.rtf_figure)]
            finished = not line  # watch's last update: a run without MAX and another has no headline of its own
            return [*outputs, *plots, result.headline or (committed if finished else gr.skip())]

        def transcribe(audio, chosen, model, device, language, task, beam_size, timestamps, word_timestamps,
                       initial_prompt, condition, silence, batch, reference_text):
            def run(progress, on_partial):  # inside watch: bad option values become the run's message
                options = DecodeOptions.from_values({
                    "language": language, "task": task, "beam_size": int(beam_size), "without_timestamps": not timestamps,
                    "word_timestamps": word_timestamps, "initial_prompt": initial_prompt,
                    "condition_on_previous_text": condition,
                    "hallucination_silence_threshold": float(silence) if silence else None, "batch_size": int(batch)})
                return comparison.run_comparison(audio, chosen, model, device_of(device), options, cache,
                                              max_seconds=max_seconds, reference_text=reference_text,
                                              progress=progress, turns=turns, on_partial=on_partial)

            unchanged = [gr.skip()] * (len(panel_outputs) + 4)
            for line, result in comparison.watch(run):
                yield line, *(shown(result, line) if result else unchanged)

        run.click(transcribe, [audio, chosen, model, device, language, task, beam_size, timestamps, word_timestamps,
                               initial_prompt, condition, silence, batch, reference_text],
                  [progress, message, *panel_outputs, timing_plot, rtf_plot, headline],
                  concurrency_limit=RUNS_AT_ONCE, show_progress="hidden")
        for control in (model, device, chosen):  # say before a run what it will have to load or compile
            control.change(lambda chosen, model, device: cache.load_note(chosen, model, device_of(device)),
                           [chosen, model, device], model_note, concurrency_limit=None, show_progress="hidden")
        mic.stream(lambda chunk, session, backend, model: live.chunk(chunk, session, backend, model, default_device),
                   [mic, live_session, live_backend, live_model], [live_session, live_text, live_stats],
                   stream_every=1.0, time_limit=int(max_seconds), show_progress="hidden", concurrency_limit=None)
        mic.stop_recording(live.stop, live_session, [live_session, live_text, live_stats], show_progress="hidden",
                           concurrency_limit=None)

        def check_again(model, device):
            if checks.start(model, device_of(device)) is None:
                gr.Info("The checks are running already: this click started nothing. Click again once they finish.")

        checks_again.click(check_again, [model, device], concurrency_limit=None, show_progress="hidden")

        def tick():
            return status(), checks.rows or None, checks.message, gr.Timer(active=busy())

        for event in (run.click, checks_again.click):  # the status line follows loads, runs and checks
            event(lambda: gr.Timer(active=True), outputs=timer, concurrency_limit=None, show_progress="hidden")
        timer.tick(tick, outputs=[status_line, checks_table, checks_message, timer], concurrency_limit=None,
                   show_progress="hidden")
        demo.load(lambda: (system_tab.system_report(cache), *benchmarks.benchmark_view(RESULTS_DIR), *tick()[1:3]),
                  outputs=[system, bench_text, bench_table, bench_rtf, bench_stages, checks_table, checks_message],
                  concurrency_limit=None)
    return demo


def quiet_queue(demo: gr.Blocks) -> None:
    """Gradio's queue polls every 1 ms while free: ~1,000 wake-ups a second in an idle app. 50 ms
    (its own setting on Windows) costs a request at most that much delay. Gradio's private settings:
    where this Gradio lacks them, a warning, and the queue keeps its own."""
    queue = getattr(demo, "_queue", None)
    if not all(hasattr(queue, name) for name in ("sleep_when_free", "progress_update_sleep_when_free")):
        logging.getLogger(__name__).warning("this Gradio's queue has no sleep_when_free: it polls at its own rate")
        return
    queue.sleep_when_free = 0.05
    queue.progress_update_sleep_when_free = 0.1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0: every interface; default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="default $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted (default 600)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="load the models on the first request instead of at start-up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cache = ModelCache(create_warmed_up, record=load_record_path())
    turns = Turns()
    checks = checks_tab.ComponentChecks(turns)
    live = live_tab.LiveStreams(ModelCache(create_warmed_up))
    models = installed_models()
    if args.warm_up and models:
        device = "gpu" if gpu_available() else "cpu"
        # MAX last: the baselines load in seconds and answer while MAX compiles; then the Live tab's
        # MAX (from the compile cache by then) and the checks
        backends = sorted(available_backends(), key=lambda b: b == "max")
        cache.warm_up([(b, models[0], device) for b in backends],
                      then=lambda: live.cache.warm_up([("max", models[0], device)],
                                                      then=lambda: checks.start(models[0], device)))
    demo = build_demo(cache, args.max_seconds, turns, checks, live)
    demo.queue(default_concurrency_limit=1, max_size=32)
    quiet_queue(demo)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=[str(EXAMPLES_DIR)])


if __name__ == "__main__":
    main()
