"""The Live tab: the microphone raced through several implementations at once, side by side
(`LiveRace`: one `showcase.live_session.LiveSession` each, all hearing the same chunks).

A recording is one Gradio stream event, which calls `LiveRaces.chunk` with each piece the browser
sends (about every 0.1 s with Gradio 6, whatever `stream_every` says). Races do not queue behind
the comparisons: their sessions come from `Transcriptions.live_session`, which runs them beside the
comparisons (in this process on models of their own; under `serve --ui` as the service's realtime
sessions, on its replicas); at most `Transcriptions.live_races` run at once. An example clip can
stand in for the microphone (`LiveRaces.play`), for a visitor without one: the browser plays it
as its pieces stream, so a room hears what is raced. A race ends with its result in large type
(`race_result`): who kept up, and how soon each made its words final.
"""

from __future__ import annotations

import html
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from maxwhisper.api import SAMPLE_RATE, MaxWhisperError
from maxwhisper.audio import load_audio
from maxwhisper.registry import BACKENDS

from ..charts import short_name
from ..choices import Choices
from ..examples import example_rows
from ..formatting import error_message, panel_title
from ..live_session import BEHIND_S, LiveSession
from ..transcriptions import Transcriptions

log = logging.getLogger(__name__)

RACERS = ("max", "faster")  # raced by default (README's Live streaming: what keeps up on a 2-core CPU)
TIE_S = 0.25  # latencies closer than this are a tie: a room cannot tell them apart
STOP_WAIT_S = 120.0  # how long a stop shows the race catching up before leaving it to finish alone
LATE_S = 2.0  # a chunk this soon after a stop is that recording's last one arriving late: it starts nothing
PLAY_CHUNK_S = 0.5  # an example played as the microphone: its pieces, sent at the clip's own pace


class LiveRace:
    """The sessions of one recording, one per implementation, fed the same chunks. A refused race has
    none and its `refusal`: the recording's later chunks show it rather than asking again."""

    def __init__(self, sessions: dict[str, LiveSession], refusal: str = ""):
        self.sessions, self.refusal = sessions, refusal
        self.stopped_at: float | None = None
        self.playing = ""  # the example clip that plays into the race as its microphone, if one does

    def add(self, chunk) -> None:
        sample_rate, samples = chunk
        for session in self.sessions.values():
            session.add(samples, sample_rate)

    def stop(self, timeout: float | None = 0) -> None:
        self.stopped_at = self.stopped_at or time.monotonic()
        for session in self.sessions.values():
            session.stop(timeout)

    @property
    def running(self) -> bool:
        return any(s.running for s in self.sessions.values())

    @property
    def ended(self) -> bool:
        """Stopped or idle, none failed (a refused race: stopped): the next chunk belongs to a new recording."""
        if self.refusal:
            return self.stopped_at is not None
        return all(s.ended for s in self.sessions.values())

    @property
    def just_stopped(self) -> bool:
        """Stopped less than LATE_S ago: a chunk now is the stopped recording's last, sent late."""
        return self.stopped_at is not None and time.monotonic() - self.stopped_at < LATE_S


def race_result(race: LiveRace) -> str:
    """HTML a room can read at the end of a race: who was first (kept up, or where none did, fell
    behind the least, in whole seconds as shown; then made its words final soonest after they were
    said: the median, to a tenth of a second; a tie where two are within TIE_S), then how each other did."""
    said, ranks = {}, {}
    for backend, s in race.sessions.items():
        if s.error:
            said[backend] = f"stopped: {html.escape(s.error)}"
            continue
        kept_up = s.share <= 1.0 and s.worst_behind_s <= BEHIND_S
        pace = "kept up" if kept_up else f"fell behind ({s.worst_behind_s:.0f} s of speech waited at worst)"
        if s.latencies:
            latency = round(statistics.median(s.latencies), 1)
            ranks[backend] = (not kept_up, 0 if kept_up else round(s.worst_behind_s), latency)
            said[backend] = f"{pace}, its words final {latency:.1f} s after they were said."
        else:
            said[backend] = f"{pace}, no word final."
    lines = []
    if ranks and len(said) > 1:
        best = min(ranks.values())
        firsts = [b for b, rank in ranks.items() if rank[:2] == best[:2] and rank[2] - best[2] < TIE_S]
        if len(firsts) == 1:
            first = "was first, though it" if best[0] else "was first: it"  # every one fell behind
            lines.append(f"{short_name(firsts[0])} {first} {said.pop(firsts[0])}")
        else:
            lines.append(
                f"A tie: {' and '.join(short_name(b) for b in firsts)} "
                f"{'fell behind' if best[0] else 'kept up'}, their words final "
                f"{' and '.join(f'{t:.1f}' for t in sorted({ranks[b][2] for b in firsts}))} s after they were said."
            )
            for b in firsts:
                said.pop(b)
        lines[0] = f"<div class='live-winner'>{lines[0]}</div>"
    lines += [f"<div>{short_name(b)} {text}</div>" for b, text in said.items()]
    return f"<div class='live-result'>{''.join(lines)}</div>" if lines else ""


def panel_html(backend: str, session: LiveSession | None) -> str:
    """An implementation's column: its name, its text so far, its figures."""
    body = (
        f"{session.text_html()}<div class='meta live-stats'>{html.escape(session.figures())}</div>"
        if session
        else "<div class='meta live-stats'>waiting for the microphone</div>"
    )
    return panel_title(backend) + body


class LiveRaces:
    """The app's live races: at most `transcriptions.live_races` running; their sessions come from
    `transcriptions.live_session`. `chunk` and `stop` are the Live tab's handlers, which answer each
    implementation's panel in the registry's order."""

    def __init__(self, transcriptions: Transcriptions):
        self.transcriptions, self.limit = transcriptions, transcriptions.live_races
        self._lock = threading.Lock()
        self._races: list[LiveRace] = []

    def start(self, backends: list[str], model: str, device: str) -> LiveRace:
        """A new race; raises MaxWhisperError when `limit` races run already, or where
        `transcriptions` has no room for one of its sessions (the others are stopped)."""
        with self._lock:
            self._races = [r for r in self._races if r.running]
            if self.limit is not None and len(self._races) >= self.limit:
                raise MaxWhisperError("another visitor's live race is running: try again in a minute")
            sessions: dict[str, LiveSession] = {}
            try:
                for backend in (b for b in BACKENDS if b in backends):
                    sessions[backend] = self.transcriptions.live_session(backend, model, device)
            except MaxWhisperError:
                LiveRace(sessions).stop()
                raise
            race = LiveRace(sessions)
            self._races.append(race)
            log.info("live race started: %s, %s on %s", ", ".join(sessions), model, device)
        return race

    def panels(self, race: LiveRace | None) -> list[str]:
        return [panel_html(b, race.sessions.get(b) if race else None) for b in BACKENDS]

    def chunk(self, chunk, race: LiveRace | None, backends: list[str], model: str, device: str) -> list:
        """A piece of a recording -> [the race, a message, each implementation's panel]."""
        if race is not None and race.playing and not race.ended:  # the microphone waits for the example
            return [race, f"⚠ {race.playing} plays as the microphone: record once it has ended.", *self.panels(race)]
        if race is not None and race.just_stopped:  # the stopped recording's last chunk, arriving late
            return [race, "", *self.panels(race)]
        if race is None or race.ended:  # the first chunk of a recording
            if not backends:
                return [None, "⚠ Choose at least one implementation to race.", *self.panels(None)]
            try:
                race = self.start(backends, model, device)
            except MaxWhisperError as e:
                race = LiveRace({}, refusal=f"⚠ {e}")
        if race.refusal:  # until the recording stops: each chunk asking again would build and stop sessions
            return [race, race.refusal, *self.panels(None)]
        return [race, self._add(race, chunk) if chunk is not None else "", *self.panels(race)]

    @staticmethod
    def _add(race: LiveRace, chunk) -> str:
        """Feeds a piece to the race: "", or why the race stopped (audio that is not audio)."""
        try:
            race.add(chunk)
        except MaxWhisperError as e:
            race.stop()
            return f"⚠ Live transcription stopped: {error_message(e)}"
        return ""

    def play(self, path: str, race: LiveRace | None, backends: list[str], model: str, device: str) -> Iterator[list]:
        """An example clip as the microphone: a new race, the clip's pieces at its own pace, then the
        stop, shown as a recording's. Refused while the tab's race runs; the microphone waits for it
        (`chunk`); a visitor who leaves ends it."""
        if race is not None and not race.ended and not race.refusal:
            yield [race, "⚠ A race is running: stop the recording before playing an example.", *self.panels(race)]
            return
        race, message, *panels = self.chunk(None, None, backends, model, device)  # the race, no audio yet
        if message or race is None:
            if race is not None:
                race.stop()  # ended: the microphone's next recording asks again
            yield [race, message, *panels]
            return
        samples = load_audio(path)
        race.playing, total, step = Path(path).name, len(samples) / SAMPLE_RATE, int(PLAY_CHUNK_S * SAMPLE_RATE)
        started = time.monotonic()
        try:
            for i in range(0, len(samples), step):
                message = self._add(race, (SAMPLE_RATE, samples[i : i + step]))
                heard = min(i + step, len(samples)) / SAMPLE_RATE
                yield [
                    race,
                    message or f"Playing {race.playing} as the microphone: {int(heard)} of {total:.0f} s",
                    *self.panels(race),
                ]
                if message:
                    return
                time.sleep(max(0.0, started + heard - time.monotonic()))
            yield from self._finish(race)
        finally:
            race.stop()  # also where the visitor left: the sessions end now, not after their idle time

    def stop(self, race: LiveRace | None) -> Iterator[list]:
        """The recording stopped: each session finishes the audio it has, shown as it goes. The race
        stays the tab's, so that a chunk the browser sent just before the stop and that arrives after
        it is recognised as late (`chunk`); the next recording starts a new one."""
        if race is None:
            yield [None, "", *self.panels(None)]
            return
        if race.playing and not race.ended:  # the microphone's stop: the example plays to its end
            yield [race, "", *self.panels(race)]
            return
        yield from self._finish(race)

    def _finish(self, race: LiveRace) -> Iterator[list]:
        race.stop()
        deadline = time.monotonic() + STOP_WAIT_S
        while race.running and time.monotonic() < deadline:
            yield [race, "", *self.panels(race)]
            time.sleep(0.5)
        yield [race, race.refusal or ("" if race.running else race_result(race)), *self.panels(race)]


def build(transcriptions: Transcriptions, choices: Choices, max_seconds: float) -> None:
    """The tab and its handlers, inside the page's gr.Blocks: its races get their sessions from
    `transcriptions.live_session`."""
    races = LiveRaces(transcriptions)
    racers = [b for b in RACERS if b in choices.backends] or choices.backends[:1]
    with gr.Tab("Live"):
        gr.Markdown(
            "Speak, or play an example, and watch each implementation write down what it hears, side by "
            "side. Black words are final, grey ones may still change."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                mic = gr.Audio(
                    sources=["microphone"],
                    type="numpy",
                    streaming=True,
                    label="Microphone",
                    elem_id="live-mic",
                    waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                )
                with gr.Row(elem_id="live-examples", equal_height=True):
                    plays = [
                        (
                            gr.Button(f"▶ {button} as the microphone", size="sm", variant="secondary", min_width=120),
                            path,
                        )
                        for path, button, _, _ in example_rows(choices.models, english=True)
                    ]
                # the example a race hears, played by the browser as its pieces stream to the race
                speaker = gr.Audio(
                    label="What the race hears", autoplay=True, interactive=False, elem_id="live-player", buttons=[]
                )
            with gr.Column(scale=2, min_width=300):
                live_backends = gr.CheckboxGroup(
                    [(short_name(b), b) for b in choices.backends],
                    value=racers,
                    label="Implementations to race",
                    elem_id="live-backends",
                    info="openai-whisper does not keep up beside the others on a 2-core CPU",
                )
                live_model = gr.Dropdown(
                    choices.models, value=choices.models[0] if choices.models else None, label="Model (installed)"
                )
        message = gr.Markdown(elem_id="live-message")
        panels, columns = [], []
        with gr.Row(equal_height=False):
            for b in BACKENDS:
                with gr.Column(min_width=260, visible=b in racers) as column:
                    panels.append(gr.HTML(panel_html(b, None), elem_id=f"live-{b}", min_height=0))
                columns.append(column)
        with gr.Accordion("About the race", open=False):
            gr.Markdown(
                "Each implementation hears the same microphone audio and updates its text once a second of new "
                "audio has arrived: it transcribes the last few seconds again and makes final the words on which "
                "two updates in a row agree (LocalAgreement-2). They run at the same time on the same CPU "
                "cores, each on a model of its own, beside any comparison another visitor runs. *Computing per "
                "second of speech* is the time its updates took, per second heard: below 1 it keeps up. *Words "
                "final after* is how long after a word was said it turned black (from when the server received "
                "the audio). How it was measured: benchmarks/README.md, Live race."
            )
        race_state = gr.State(None, delete_callback=lambda race: race.stop() if race else None)
    mic.stream(
        lambda chunk, race, backends, model: races.chunk(chunk, race, backends, model, choices.default_device),
        [mic, race_state, live_backends, live_model],
        [race_state, message, *panels],
        stream_every=1.0,
        time_limit=int(max_seconds),
        show_progress="hidden",
        concurrency_limit=None,
    )
    mic.stop_recording(
        races.stop, race_state, [race_state, message, *panels], show_progress="hidden", concurrency_limit=None
    )

    def player(path: str):
        def play(race, backends, model):  # a generator function, as Gradio streams only those
            started = False  # the browser plays the clip once its race has started
            for update in races.play(path, race, backends, model, choices.default_device):
                starts = not started and update[0] is not None and update[0].playing == Path(path).name
                started = started or starts
                yield [*update, path if starts else gr.skip()]

        return play

    for button, path in plays:  # (the player emptied first: the same clip again plays again)
        button.click(lambda: None, outputs=speaker, show_progress="hidden", concurrency_limit=None).then(
            player(path),
            [race_state, live_backends, live_model],
            [race_state, message, *panels, speaker],
            show_progress="hidden",
            concurrency_limit=None,
        )
    live_backends.change(
        lambda backends: [gr.Column(visible=b in backends) for b in BACKENDS],
        live_backends,
        columns,
        show_progress="hidden",
        concurrency_limit=None,
    )
