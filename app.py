"""MAX-Whisper showcase: Whisper on Modular's MAX Graph next to openai-whisper and faster-whisper.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--max-seconds 600]

The page only: each tab lives in `showcase/tabs/` (compare, live, checks, benchmarks, system), over
the services of the `showcase` package; the tabs transcribe through a `showcase.transcriptions.
Transcriptions` given to `build_demo` (here `LocalTranscriptions`: models loaded in this process).
"""
from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")  # offline compiles otherwise wait on it

import gradio as gr  # noqa: E402

import baselines  # noqa: E402
from maxwhisper.registry import create_warmed_up, register  # noqa: E402
from showcase.models import load_record_path, use_persistent_storage  # noqa: E402

register(*baselines.BACKENDS)  # a bare checkout (a Space) has no entry points; installed, theirs came first

use_persistent_storage()  # a Space's /data keeps MAX's compile cache: before max is imported

from showcase.choices import Choices  # noqa: E402
from showcase.tabs import benchmarks, checks as checks_tab, compare, live, system  # noqa: E402
from showcase.transcriptions import LocalTranscriptions, Transcriptions  # noqa: E402
from showcase.turns import Turns  # noqa: E402

INTRO = """# MAX-Whisper
OpenAI's Whisper re-implemented on [Modular's MAX Graph](https://docs.modular.com/max/), run side by side with
[openai-whisper](https://github.com/openai/whisper) (PyTorch) and
[faster-whisper](https://github.com/SYSTRAN/faster-whisper) (CTranslate2): the same weights, the same decoding
options, the same audio."""


def build_demo(transcriptions: Transcriptions, max_seconds: float = 600.0,
               checks: checks_tab.ComponentChecks | None = None, choices: Choices | None = None) -> gr.Blocks:
    """The page: a status line over the five tabs. Its tabs transcribe only through `transcriptions`;
    `checks` (default: checks that wait for no transcription, started by their button only, as in
    the service's app) should share the turns of local transcriptions, as `main`'s do; `choices`
    (default: this machine's) are the models, backends and devices offered."""
    checks = checks or checks_tab.ComponentChecks(Turns(), start_after_warm_up=False)
    choices = choices or Choices.here()

    def busy() -> bool:
        return transcriptions.busy() or checks.running()

    with gr.Blocks(title="MAX-Whisper") as demo:
        gr.Markdown(INTRO)
        status_line = gr.Markdown(transcriptions.status(), elem_id="status")
        timer = gr.Timer(2.0)
        compare_tab = compare.build(transcriptions, choices, max_seconds)
        live.build(transcriptions, choices, max_seconds)
        checks_ui = checks_tab.build(checks, choices, compare_tab.model, compare_tab.device)
        views = [system.build(transcriptions), benchmarks.build(), checks_ui.view]  # filled as the page opens

        def tick():
            return transcriptions.status(), *checks_ui.view.values(), gr.Timer(active=busy())

        for button in (compare_tab.run, checks_ui.again):  # the status line follows loads, runs and checks
            button.click(lambda: gr.Timer(active=True), outputs=timer, concurrency_limit=None, show_progress="hidden")
        timer.tick(tick, outputs=[status_line, *checks_ui.view.outputs, timer], concurrency_limit=None,
                   show_progress="hidden")
        demo.load(lambda: (transcriptions.status(), *(value for view in views for value in view.values())),
                  outputs=[status_line, *(output for view in views for output in view.outputs)],
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
                        help="address to listen on (0.0.0.0: every interface; "
                             "default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="default $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted (default 600)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="load the models on the first request instead of at start-up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    transcriptions = LocalTranscriptions(create_warmed_up, record=load_record_path())
    choices = Choices.here()
    models, device = choices.models, choices.default_device
    checks = checks_tab.ComponentChecks(transcriptions.turns, start_after_warm_up=args.warm_up and bool(models))
    if args.warm_up and models:
        # MAX last: the baselines load in seconds and answer while MAX compiles; then the Live tab's
        # MAX (from the compile cache by then) and the checks
        backends = sorted(choices.backends, key=lambda b: b == "max")
        transcriptions.models.warm_up(
            [(b, models[0], device) for b in backends],
            then=lambda: transcriptions.stream_models.warm_up([("max", models[0], device)],
                                                              then=lambda: checks.start(models[0], device)))
    demo = build_demo(transcriptions, args.max_seconds, checks)
    demo.queue(default_concurrency_limit=1, max_size=32)
    quiet_queue(demo)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=[str(compare.EXAMPLES_DIR)])


if __name__ == "__main__":
    main()
