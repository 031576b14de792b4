"""The page: a title, a one-line pitch and a status badge over the five tabs (`build_demo`), its
style (`CSS`, carried inside the page so that `app.py` and the service's mount show the same), and
Gradio's queue made quiet while idle (`quiet_queue`). `app.py` serves it with models loaded in its
process; `serve --ui` mounts it over `showcase.remote.ServiceTranscriptions` through `mount_on_service`,
which pyproject.toml declares as the entry point `maxwhisper.ui` (the service imports no app)."""

from __future__ import annotations

import html
import logging
import re
import time

import gradio as gr

from .choices import Choices
from .examples import EXAMPLES_DIR
from .remote import ServiceTranscriptions
from .tabs import benchmarks, compare, live, system
from .tabs import checks as checks_tab
from .transcriptions import Transcriptions
from .turns import Turns

WAKE_S = 5.0  # the badge's timer ticks this long after a wake at least: a run claims its turn a moment later

TITLE = """<div id='title'><h1>MAX-Whisper</h1><p>OpenAI's Whisper rebuilt on
<a href='https://docs.modular.com/max/' target='_blank'>Modular's MAX Graph</a>: the same tokens as
openai-whisper, faster than it and faster-whisper on a CPU.</p></div>"""

# on a narrow screen the results come under the inputs: Run scrolls to them (not where they are beside)
TO_RESULTS_JS = """document.addEventListener('click', (event) => {
  const results = document.querySelector('#results');
  if (event.target.closest('#run') && results && results.getBoundingClientRect().top > innerHeight / 2)
    results.scrollIntoView({behavior: 'smooth'});
});"""

CSS = """
/* Gradio's local Source Sans Pro SemiBold holds ~55 glyphs: semibold text fell back letter by letter ("MᴀX") */
@font-face {font-family: 'Source Sans Pro'; font-weight: 600; font-style: normal;
            src: url('static/fonts/SourceSansPro/SourceSansPro-Bold.woff2') format('woff2')}
/* WCAG AA contrast (4.5:1) in the light theme: Gradio's orange and light greys read at 2-3:1 on white */
:root {--color-accent: #c2410c; --button-primary-background-fill: #c2410c; --button-primary-border-color: #c2410c;
       --button-primary-background-fill-hover: #9a3412; --button-primary-border-color-hover: #9a3412;
       --body-text-color-subdued: #52525b; --block-info-text-color: #52525b; --input-placeholder-color: #71717a}
.gradio-container time, .gradio-container time#time, .gradio-container time#duration, .gradio-container .playback,
footer, footer * {color: #52525b}
#title h1 {margin: 0; font-size: 1.7rem}
#title p {margin: .2rem 0 0; font-size: 1rem; max-width: none}
#title a {padding: 0}
#status {text-align: right}
.badge {display: inline-block; padding: .2rem .75rem; border-radius: .8rem; font-size: .9rem; text-align: left;
        background: #dcfce7; color: #166534}
.badge.busy {background: #fef3c7; color: #92400e}
.badge.failed {background: #fee2e2; color: #991b1b}
#examples button {flex: 1 1 auto}
.verdict {font-size: 1.2rem; line-height: 1.45}
.note {color: var(--body-text-color-subdued); font-size: .9rem; margin: .25rem 0}
.bars {font-size: .85rem}
.bars-title {font-weight: 600; margin-bottom: .25rem}
.bar-row {display: flex; align-items: center; gap: .5rem; margin: .2rem 0}
.bar-name {flex: 0 0 11rem; font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis}
.bar {flex: 1 1 3rem; display: flex; height: .9rem; background: var(--border-color-primary); border-radius: 3px;
      overflow: hidden}
.bar-fill {display: block; height: 100%}
.bar-value, .bar-failed {flex: 0 0 auto; white-space: nowrap}
.bar-failed {color: #b91c1c}
.bar-detail {margin: -.1rem 0 .3rem 11.5rem; color: var(--body-text-color-subdued); font-size: .8rem}
.legend {margin-top: .3rem}
.phone-only {display: none}
.swatch {display: inline-block; width: .7rem; height: .7rem; margin: 0 .2rem 0 .6rem; border-radius: 2px}
.panel-head {border-top: 4px solid; padding-top: .3rem}
.panel-name {font-weight: 700}
.chip {font-size: .75rem; padding: .05rem .5rem; border-radius: 999px; background: var(--border-color-primary)}
.chip-running {background: #fef3c7; color: #92400e}
.chip-done {background: #dcfce7; color: #166534}
.chip-failed {background: #fee2e2; color: #991b1b}
.progress {height: 4px; background: var(--border-color-primary); margin-top: .3rem; border-radius: 2px}
.progress div {height: 100%; background: #f59e0b; transition: width .3s}
.meta {font-size: .85rem; margin-top: .15rem}
.meta.error {color: #b91c1c}
.diff {line-height: 1.6; overflow-wrap: anywhere}
.live-text {font-size: 1.2rem; line-height: 1.6; min-height: 3.2em; margin: .3rem 0}
.live-result {font-size: 1.2rem; line-height: 1.5; margin: .4rem 0; padding: .4rem .8rem;
              border-left: 4px solid #166534}
.live-winner {font-size: 1.6rem; font-weight: 700}
#live-mic select, #audio select {max-width: 100%; width: auto}  /* Gradio cuts "No microphone found" at 10rem */
.modebar-container {display: none !important}
@media (max-width: 600px) {
  #title h1 {font-size: 1.4rem}
  #title p {font-size: .9rem}
  #status {text-align: left}
  .bar-row {flex-wrap: wrap; row-gap: 0}
  .bar-name {flex-basis: 100%}
  .bar-detail {margin-left: 0}
  .phone-only {display: block}
}
"""


def badge_html(text: str) -> str:
    """The status badge: green when a run can start on every model, amber while one loads, red after
    a failed load."""
    kind = "failed" if text.startswith("⚠") else "ready" if re.search(r"(^|: )ready\b", text, re.I) else "busy"
    return f"<span class='badge {kind}'>{html.escape(text)}</span>"


def build_demo(
    transcriptions: Transcriptions,
    max_seconds: float = 600.0,
    checks: checks_tab.ComponentChecks | None = None,
    choices: Choices | None = None,
) -> gr.Blocks:
    """The page: a status badge over the five tabs. Its tabs transcribe only through `transcriptions`;
    `checks` (default: checks that wait for no transcription, as in the service's app) should share
    the turns of local transcriptions, as `app.main`'s do; `choices`
    (default: this machine's) are the models, backends and devices offered."""
    checks = checks or checks_tab.ComponentChecks(Turns())
    choices = choices or Choices.here()

    def busy() -> bool:
        return transcriptions.busy() or checks.running()

    def badge() -> str:
        text = transcriptions.badge()
        return badge_html(text + (" · checks running" if checks.running() else ""))

    with gr.Blocks(title="MAX-Whisper") as demo:
        with gr.Row(equal_height=True, elem_id="header"):
            with gr.Column(scale=4, min_width=320):
                gr.HTML(f"<style>{CSS}</style>{TITLE}", min_height=0, js_on_load=TO_RESULTS_JS)
            with gr.Column(scale=1, min_width=240):
                # empty until the page loads: a value given here is the one at the server's start,
                # which every new page would show for a moment (a load long finished)
                status = gr.HTML("", elem_id="status", min_height=0)
        timer = gr.Timer(2.0)
        compare_tab = compare.build(transcriptions, choices, max_seconds)
        live.build(transcriptions, choices, max_seconds)
        bench_view = benchmarks.build()
        checks_ui = checks_tab.build(checks, choices, compare_tab.model, compare_tab.device)
        views = [system.build(transcriptions), bench_view, checks_ui.view]  # filled as the page opens

        awake_until = [0.0]

        def wake():
            awake_until[0] = time.monotonic() + WAKE_S
            return gr.Timer(active=True)

        def tick():
            return badge(), *checks_ui.view.values(), gr.Timer(active=busy() or time.monotonic() < awake_until[0])

        # the badge follows loads, runs and checks. A run wakes it through its progress line: Gradio
        # sends a click's other listeners only after the run's own has ended
        for event in (compare_tab.message.change, checks_ui.again.click, checks_ui.tab.select):
            event(wake, outputs=timer, concurrency_limit=None, show_progress="hidden")
        timer.tick(
            tick, outputs=[status, *checks_ui.view.outputs, timer], concurrency_limit=None, show_progress="hidden"
        )
        # hidden: Gradio would print its queue text ("queue: 1/1 | 0.1/0.1s") over the badge. The badge
        # loads apart, so that it need not wait for the tabs' views (the System tab walks the cache)
        demo.load(badge, outputs=status, concurrency_limit=None, show_progress="hidden")
        demo.load(
            lambda: tuple(value for view in views for value in view.values()),
            outputs=[output for view in views for output in view.outputs],
            concurrency_limit=None,
            show_progress="hidden",
        )
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


def mount_on_service(api, ingress, key_accepted=None):
    """The page at / of the service's FastAPI app `api` (`serve --ui`), its transcriptions going to
    the model deployments of `ingress` (a `maxwhisper.service.deployments.Ingress`). With
    `key_accepted`, Gradio's login page asks for an API key: a browser sends no Bearer header."""
    config = ingress.config
    choices = Choices(list(config.served.models), list(config.served.backends), config.device == "gpu")
    demo = build_demo(ServiceTranscriptions(ingress), config.max_seconds, choices=choices)
    demo.queue(default_concurrency_limit=1, max_size=64)
    quiet_queue(demo)
    login = (
        {
            "auth": lambda user, key: key_accepted(key),
            "auth_message": "This service needs an API key: any user name, the key as the password.",
        }
        if key_accepted
        else {}
    )
    return gr.mount_gradio_app(api, demo, path="/", allowed_paths=[str(EXAMPLES_DIR)], **login)
