"""MAX-Whisper showcase: Whisper on Modular's MAX Graph next to openai-whisper and faster-whisper.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--max-seconds 600]

The command line only: the page is `showcase.page.build_demo`, given here `LocalTranscriptions`
(models loaded in this process, warmed up at start, MAX last) and component checks that share its
turns.
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")  # offline compiles otherwise wait on it

import baselines  # noqa: E402
from maxwhisper.registry import BACKENDS, create_warmed_up, register  # noqa: E402
from showcase.models import load_record_path, use_persistent_storage  # noqa: E402

register(*baselines.BACKENDS)  # a bare checkout (a Space) has no entry points; installed, theirs came first

use_persistent_storage()  # a Space's /data keeps MAX's compile cache: before max is imported

from showcase.choices import Choices  # noqa: E402
from showcase.examples import EXAMPLES_DIR  # noqa: E402
from showcase.language_check import detector_for  # noqa: E402
from showcase.page import build_demo, quiet_queue  # noqa: E402
from showcase.tabs import checks as checks_tab  # noqa: E402
from showcase.tabs.live import RACERS  # noqa: E402
from showcase.transcriptions import LocalTranscriptions  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (0.0.0.0: every interface; default $GRADIO_SERVER_NAME or 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="default $GRADIO_SERVER_PORT or 7860",
    )
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted (default 600)")
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="load the models on the first request instead of at start-up",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    transcriptions = LocalTranscriptions(create_warmed_up, record=load_record_path())
    choices = Choices.here()
    models, device = choices.models, choices.default_device
    checks = checks_tab.ComponentChecks(transcriptions.turns)
    if args.warm_up and models:
        # MAX last: the baselines load in seconds and answer while MAX compiles, and so does the model that
        # hears an English-only model's clip's language; then MAX's graphs that a first window does not need;
        # then the Live tab's racers (MAX's graphs from the compile cache by then)
        backends = sorted(choices.backends, key=lambda b: BACKENDS[b].compiles)
        keys = [(b, models[0], device) for b in backends]
        detector = detector_for(models, choices.backends)
        if detector and models[0].endswith(".en"):
            keys.insert(len([b for b in backends if not BACKENDS[b].compiles]), (*detector, device))

        def then() -> None:
            transcriptions.models.compile_rest()
            transcriptions.stream_models.warm_up(
                [(b, models[0], device) for b in RACERS if b in backends],
                then=transcriptions.stream_models.compile_rest,
            )

        transcriptions.models.warm_up(keys, then=then)
    demo = build_demo(transcriptions, args.max_seconds, checks)
    demo.queue(default_concurrency_limit=1, max_size=32)
    quiet_queue(demo)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(EXAMPLES_DIR)])


if __name__ == "__main__":
    main()
