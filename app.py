"""MAX-Whisper showcase: Whisper on Modular's MAX Graph next to openai-whisper and faster-whisper.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--max-seconds 600]

The UI only: the logic lives in `maxwhisper.app_support`, models come from `maxwhisper.registry`.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")  # offline compiles otherwise wait on it

import gradio as gr  # noqa: E402
from gradio.media import get_audio  # noqa: E402

from maxwhisper import app_support as support  # noqa: E402
from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.checkpoint import installed_models  # noqa: E402
from maxwhisper.graph.model import gpu_available  # noqa: E402
from maxwhisper.registry import BACKENDS, available_backends  # noqa: E402
from maxwhisper.tokenizer import LANGUAGES  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "benchmarks" / "results"
EXAMPLES = ("cate_blanch.mp3", "heath_ledger.mp3", "cate_blanch_2.mp3")  # speech clips the gradio package ships
HEAVY = "models"  # concurrency group of the events that run models: one at a time in all
INTRO = """# MAX-Whisper
OpenAI's Whisper re-implemented on [Modular's MAX Graph](https://docs.modular.com/max/), run side by side with
[openai-whisper](https://github.com/openai/whisper) (PyTorch) and
[faster-whisper](https://github.com/SYSTRAN/faster-whisper) (CTranslate2): the same weights, the same decoding
options, the same audio."""


def build_demo(cache: support.ModelCache, max_seconds: float = 600.0) -> gr.Blocks:
    gpu = gpu_available()
    default_device = "gpu" if gpu else "cpu"
    models = installed_models()
    backends = available_backends()

    def device_of(choice: str) -> str:
        return default_device if choice == "auto" else choice

    with gr.Blocks(title="MAX-Whisper") as demo:
        gr.Markdown(INTRO)
        status = gr.Markdown(cache.status(), elem_id="status")
        timer = gr.Timer(2.0)

        with gr.Tab("Transcribe & compare"):
            with gr.Row():
                with gr.Column(scale=3):
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label=f"Audio (upload or record, up to {max_seconds:g} s)")
                    gr.Examples([[get_audio(name)] for name in EXAMPLES], inputs=[audio],
                                label="Examples (speech clips shipped with gradio)", cache_examples=False)
                    reference_text = gr.Textbox(label="Reference text (optional)", lines=2,
                                                placeholder="Paste what is said to get each implementation's WER")
                    run = gr.Button("Transcribe with each implementation", variant="primary", elem_id="run")
                with gr.Column(scale=2):
                    chosen = gr.CheckboxGroup([(support.label(b), b) for b in backends], value=backends,
                                              label="Implementations")
                    model = gr.Dropdown(models, value=models[0] if models else None, label="Model (installed)")
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
            message = gr.Markdown(elem_id="message")
            panel_outputs = []
            with gr.Row(equal_height=False):
                for b in BACKENDS:
                    with gr.Column(visible=False, min_width=260) as column:
                        gr.Markdown(f"### {support.label(b)}")
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

        with gr.Tab("Component tests") as checks_tab:
            gr.Markdown("Each MAX component against openai-whisper's PyTorch module built from the same weights "
                        "(`maxwhisper.selfcheck`), with the model and device chosen on the first tab.")
            checks_message = gr.Markdown()
            checks_table = gr.Dataframe(headers=support.CHECK_HEADERS, interactive=False, wrap=True)
            checks_again = gr.Button("Run the checks again")
            checks_done = gr.State(False)

        with gr.Tab("Benchmarks"):
            bench_text = gr.Markdown(elem_id="benchmarks")
            bench_rtf = gr.Plot(show_label=False)
            bench_stages = gr.Plot(show_label=False)
            bench_table = gr.Dataframe(headers=["file", *support.BENCH_COLUMNS], interactive=False)

        with gr.Tab("System"):
            system = gr.Markdown(elem_id="system")
            gr.Button("Refresh").click(lambda: support.system_report(cache), outputs=system, concurrency_limit=None)

        def transcribe(audio, chosen, model, device, language, task, beam_size, timestamps, word_timestamps,
                       initial_prompt, condition, silence, reference_text, progress=gr.Progress()):
            options = DecodeOptions(language=None if language == "auto" else language, task=task,
                                    beam_size=int(beam_size), without_timestamps=not timestamps,
                                    word_timestamps=word_timestamps, initial_prompt=initial_prompt or None,
                                    condition_on_previous_text=condition,
                                    hallucination_silence_threshold=float(silence) if silence else None)
            result = support.run_comparison(audio, chosen, model, device_of(device), options, cache,
                                            max_seconds=max_seconds, reference_text=reference_text,
                                            progress=progress)
            outputs = [result.message]
            for b in BACKENDS:
                p = result.panels.get(b, support.Panel(b))
                outputs += [gr.Column(visible=b in result.panels), p.summary, p.text, p.segments, p.diff_html,
                            p.files]
            plots = [gr.Plot(fig, visible=fig is not None) for fig in (result.timing_figure, result.rtf_figure)]
            return [*outputs, *plots]

        run.click(transcribe, [audio, chosen, model, device, language, task, beam_size, timestamps, word_timestamps,
                               initial_prompt, condition, silence, reference_text],
                  [message, *panel_outputs, timing_plot, rtf_plot],
                  concurrency_id=HEAVY, concurrency_limit=1)

        def checks(model, device):
            for rows, text in support.run_component_checks(cache, model, device_of(device)):
                yield rows, text, True

        def checks_first_time(done, model, device):
            if not done:
                yield from checks(model, device)

        checks_tab.select(checks_first_time, [checks_done, model, device],
                          [checks_table, checks_message, checks_done], concurrency_id=HEAVY, concurrency_limit=1)
        checks_again.click(checks, [model, device], [checks_table, checks_message, checks_done],
                           concurrency_id=HEAVY, concurrency_limit=1)

        for event in (run.click, checks_tab.select, checks_again.click):  # the status line follows model loads
            event(lambda: gr.Timer(active=True), outputs=timer, concurrency_limit=None, show_progress="hidden")
        timer.tick(lambda: (cache.status(), gr.Timer(active=cache.busy())), outputs=[status, timer],
                   concurrency_limit=None, show_progress="hidden")
        demo.load(lambda: (support.system_report(cache), *support.benchmark_view(RESULTS_DIR)),
                  outputs=[system, bench_text, bench_table, bench_rtf, bench_stages], concurrency_limit=None)
    return demo


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

    cache = support.ModelCache()
    models = installed_models()
    if args.warm_up and models:
        device = "gpu" if gpu_available() else "cpu"
        # in the registry's order: MAX first, its compile is the long one
        cache.warm_up([(b, models[0], device) for b in available_backends()])
    demo = build_demo(cache, args.max_seconds)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=[str(Path(get_audio(EXAMPLES[0])).parent)])


if __name__ == "__main__":
    main()
