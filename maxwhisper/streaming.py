"""Live transcription: audio arrives in chunks, and LocalAgreement-2 commits the words on which two
hypotheses in a row agree.

Backend-neutral over the `Transcriber` protocol: a `WindowTranscriber` (MAX, faster-whisper) hears one
window per hypothesis, the buffer and `audio.STREAM_PADDING_S` of silence (`transcribe_window`), another
transcriber its whole seek loop. `Streamer` feeds, paces and trims the buffer and holds back what fails
the offline rules or repeats; `stream_audio` replays a file as if it arrived in real time. The rules, and
the measurements behind the constants, are in docs/streaming.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .api import SAMPLE_RATE, DecodeOptions, Segment, Timings, Transcriber
from .audio import N_FRAMES, N_SAMPLES, STREAM_PADDING_S, heard_frames
from .decoding import compression_ratio
from .windows import needs_fallback

PROMPT_CHARS = 200  # committed text before the buffer given as prompt (as whisper_streaming)
OVERLAP_WORDS = 5  # longest repeat of the committed tail looked for at a hypothesis's start
FORCED_CUT_S = 25.0  # a buffer this long is cut even where nothing in it is committed
KEEP_S = 5.0  # the audio a forced cut leaves in the buffer
# the audio a cut at a segment end leaves in the buffer, at least: the next words are heard with audio
# before them, or two hypotheses can agree on a word misheard (docs/streaming.md)
CONTEXT_S = 5.0
# the committed audio a cut between committed words leaves before the words still to commit (docs/streaming.md)
WORD_CUT_CONTEXT_S = 2.0
# the shortest pause between committed words that such a cut is made in: word times move between
# hypotheses, and a cut right at a word's end can cut into the next word as heard next (docs/streaming.md)
PAUSE_S = 0.2
SETTLE_S = 0.3  # audio each of two agreeing hypotheses must have heard after a word
BUDGET = 0.6  # the share of the new audio's duration that `Streamer.feed`'s hypotheses may take
STEP_S = 0.5  # the new audio the second of `Streamer.feed`'s two hypotheses hears beyond the first (docs/streaming.md)
REPEAT_WORDS = 4  # words in a row that, repeating the words just before them, are held back (`repeat_start`)
REPEAT_CONTEXT = 30  # the words before a segment that `repeat_start` looks at
LOOP_WORDS = 40  # committed words in a row over which `StreamReport.loop_ratio` looks for a loop


def quantile(values, q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) without interpolation: the value at 0-based index floor(q n) of
    the n sorted values (the last for q=1); None for no values. (q=0.9 is the p90 of the `stream`
    command and of `bench streaming`; q=0.5 is the upper of the two middle values when n is even,
    not statistics.median's average of them.)"""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


@dataclass(frozen=True)
class StreamWord:
    start: float  # seconds since the stream began
    end: float
    text: str  # as the model wrote it, with its leading space

    @property
    def spoken(self) -> bool:
        """A word, not the punctuation alone that a stream's end owes its last word: it has a latency."""
        return bool(_key(self.text))


# a number said alone, written as a word or as digits by different windows ("0." then "zero")
_NUMBERS = {w: str(n) for n, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def _key(text: str) -> str:
    """What two hypotheses must share for a word to count as agreed: case, punctuation, and whether
    a number up to ten is written in digits aside."""
    key = re.sub(r"[^\w']", "", text.lower())
    return _NUMBERS.get(key, key)


def _trailing_punctuation(text: str) -> tuple[str, str]:
    """A word's text split before the punctuation that ends it: ("Americans", ".")."""
    body = re.sub(r"[^\w\s']+$", "", text)
    return body, text[len(body) :]


class LocalAgreement:
    """LocalAgreement-2: a word is committed once two consecutive hypotheses agree on it and on
    every word before it, each of them having heard at least SETTLE_S of audio after it: a word heard
    last is heard with little of what follows it, and two hypotheses can agree on it misheard.

    The punctuation that ends the last committed word is committed with the next word, as the
    hypothesis that commits that word writes it: a pause mid-sentence makes a window end it with a
    period, which the words after the pause take back ("Americans, ask", not "Americans. ask")."""

    def __init__(self):
        self.committed: list[StreamWord] = []
        self.tentative: list[StreamWord] = []  # the previous hypothesis beyond the committed words
        self.tentative_heard_until = float("inf")  # stream time up to which the previous hypothesis heard
        self.owed = ""  # the last committed word's ending punctuation, committed before the next word

    def update(
        self,
        hypothesis: list[StreamWord],
        heard_until: float = float("inf"),
        heard_from: float = float("-inf"),
        held_back: bool = False,
    ) -> list[StreamWord]:
        """A new hypothesis (words in stream time) over the audio heard from `heard_from` until
        `heard_until` (stream time); returns the words it commits. A hypothesis `held_back` before
        any new word says nothing of the tentative words: they stay, for the next one or the end."""
        new = self._heard(hypothesis, heard_from, held_back)
        if new is None:
            return []
        agreed = []
        for previous, word in zip(self.tentative, new):
            if (
                _key(previous.text) != _key(word.text)
                or previous.end > self.tentative_heard_until - SETTLE_S
                or word.end > heard_until - SETTLE_S
            ):
                break
            agreed.append(word)
        self.tentative = new[len(agreed) :]
        self.tentative_heard_until = heard_until
        return self._commit(agreed)

    def finish(
        self,
        before: float = float("inf"),
        hypothesis: list[StreamWord] | None = None,
        heard_from: float = float("-inf"),
        held_back: bool = False,
    ) -> list[StreamWord]:
        """The tentative words that end by `before` (all of them: the end of the stream) are
        committed as they stand; `hypothesis`: those of a last hypothesis (as `update`'s) beyond the
        committed ones take the tentative ones' place first, unless it is `held_back` before any."""
        if hypothesis is not None and (new := self._heard(hypothesis, heard_from, held_back)) is not None:
            self.tentative = new
        n = next((i for i, w in enumerate(self.tentative) if w.end > before), len(self.tentative))
        done, self.tentative = self.tentative[:n], self.tentative[n:]
        return self._commit(done, final=before == float("inf"))

    def _commit(self, words: list[StreamWord], final: bool = False) -> list[StreamWord]:
        """`words` committed: the first with the punctuation owed before it, the last without its
        own, which is owed until the next commit (`final`: the stream's end, where nothing is owed)."""
        if final and not words and self.owed and self.committed:
            words = [StreamWord(self.committed[-1].end, self.committed[-1].end, "")]
        if not words:
            return []
        words = [dataclasses.replace(words[0], text=self.owed + words[0].text), *words[1:]]
        body, self.owed = _trailing_punctuation(words[-1].text)
        if final:
            self.owed = ""
        else:
            words[-1] = dataclasses.replace(words[-1], text=body)
        self.committed += words
        return words

    def _heard(self, hypothesis: list[StreamWord], heard_from: float, held_back: bool) -> list[StreamWord] | None:
        """The hypothesis's words beyond the committed ones, the punctuation it writes after the last
        committed word becoming the one owed; None where it is `held_back` before any such word: it
        says nothing of the tentative words nor of that punctuation."""
        new, owed = self._beyond_committed(hypothesis, heard_from)
        if held_back and not new:
            return None
        if owed is not None:
            self.owed = owed
        return new

    def _beyond_committed(self, hypothesis: list[StreamWord], heard_from: float) -> tuple[list[StreamWord], str | None]:
        """The hypothesis without what is committed already:
        - the words that end by the last committed word's end;
        - a first word lying mostly before that end, unless the word before it is the last committed one
          (a committed word heard a little later, or heard as two words);
        - a repeat of the committed tail at its start, looked for where what is left begins within a
          second of the committed end, or where the hypothesis heard the last committed word's audio
          (from `heard_from`) and did not hear that word there (it moved later).
        Ends are compared, not starts: word times move by tenths of a second between hypotheses.
        Also returns the punctuation it writes after the last committed word (None: it does not write it)."""
        if not self.committed:
            return list(hypothesis), None
        last = self.committed[-1]
        before = [w for w in hypothesis if w.end <= last.end]
        new = [w for w in hypothesis if w.end > last.end]
        heard_as_committed = bool(before) and _key(before[-1].text) == _key(last.text)
        as_last = before[-1] if heard_as_committed else None  # the word this hypothesis writes for it
        moved = last.start >= heard_from and not heard_as_committed  # (not heard where it was committed)
        if new and (new[0].start + new[0].end) / 2 < last.end and not heard_as_committed:
            as_last, new, moved = new[0], new[1:], False
        if new and (new[0].start - last.end < 1 or moved):
            tail = [_key(w.text) for w in self.committed[-OVERLAP_WORDS:]]
            for n in range(min(len(tail), len(new)), 0, -1):
                if tail[-n:] == [_key(w.text) for w in new[:n]]:
                    as_last, new = new[n - 1], new[n:]
                    break
        if as_last is not None and _key(as_last.text) == _key(last.text):  # the punctuation owed, as written here
            return new, _trailing_punctuation(as_last.text)[1]
        return new, None


def repeat_start(words: list[str], before: list[str]) -> int | None:
    """Where in a segment's words (their `_key`s) REPEAT_WORDS or more words in a row repeat the words
    just before them, the segment's own or the `before` ones: the index of the second copy's first
    word (0 where that copy begins in `before`, ending in the segment); None: nowhere. A window that
    hears silence after speech fills it so, with the last sentence again (docs/streaming.md)."""
    seq = [*before, *words]
    for end in range(len(before) + 1, len(seq) + 1):  # the first word of the segment the second copy ends on
        for n in range(REPEAT_WORDS, end // 2 + 1):
            if seq[end - 2 * n : end - n] == seq[end - n : end]:
                return max(0, end - n - len(before))
    return None


def fails_offline_rules(segment: Segment, options: DecodeOptions) -> bool:
    """The offline loop would not keep this segment's decoding: its window's decoding too
    compressible or too improbable (`windows.needs_fallback`; the loop keeps the last
    temperature's decoding whatever it looks like, a stream does not), or the segment's own text too
    compressible (a loop inside a window whose text as a whole passed)."""
    threshold = options.compression_ratio_threshold
    return needs_fallback(segment.compression_ratio, segment.avg_logprob, segment.no_speech_prob, options) or (
        threshold is not None and compression_ratio(segment.text) > threshold
    )


@dataclass(frozen=True)
class StreamUpdate:
    committed: list[StreamWord]  # committed by this update
    tentative: list[StreamWord]  # the uncommitted tail after it
    compute_s: float  # seconds the transcription took (its `timings.total_s`)
    held_back: int = 0  # hypothesis segments left out (wholly, or from a repeat on): offline rules, repeats
    timings: Timings | None = None  # the transcription's, by stage (None: the stream's end heard nothing again)
    heard_until: float | None = None  # stream time up to which the hypothesis heard (None: as timings)
    final: bool = False  # the stream's end (`Streamer.finish`)


def _one_after_the_other(first: Timings, second: Timings) -> Timings:
    """The timings of two transcriptions of one update (its padded window, then the 30 s one)."""

    def add(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a + b

    return Timings(
        second.load_s,
        second.compile_s,
        add(first.features_s, second.features_s),
        add(first.encode_s, second.encode_s),
        add(first.decode_s, second.decode_s),
        first.total_s + second.total_s,
    )


class Streamer:
    """Feed audio with `feed` (float32 mono samples at 16 kHz, any length; `push` for one
    hypothesis whatever its cost), then `finish`."""

    def __init__(self, transcriber: Transcriber, options: DecodeOptions = DecodeOptions(), trim_s: float = 15.0):
        self.transcriber = transcriber
        self.options = dataclasses.replace(
            options, word_timestamps=True, batch_size=None, temperature=options.temperature[:1]
        )  # no fallback (docs/streaming.md)
        self.temperatures = options.temperature  # the schedule, for `finish`
        self.windowed = hasattr(transcriber, "transcribe_window")  # a `WindowTranscriber`
        self.audible = N_SAMPLES if self.windowed else None  # samples of the buffer a hypothesis hears
        self.trim_s = trim_s
        self.policy = LocalAgreement()
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0.0  # stream time of buffer[0]
        self.segment_ends: list[float] = []  # of the last hypothesis, in stream time
        self.held_back_span: tuple[float, float] | None = None  # the last hypothesis's held back: (start, segment end)
        self.window_failed = False  # the last hypothesis's window failed `windows.needs_fallback`'s rules
        self.last_compute_s: float | None = None  # the last update's computing time
        self.draft: tuple[int, ...] = ()  # the tokens this stream's last window decoded, the next one's draft

    @property
    def committed_text(self) -> str:
        return "".join(w.text for w in self.policy.committed).strip()

    def push(self, samples: np.ndarray) -> StreamUpdate:
        """One hypothesis over all the buffered audio, the new `samples` included."""
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])
        return self._update(len(self.buffer))

    def feed(self, samples: np.ndarray) -> Iterator[StreamUpdate]:
        """The new `samples` heard in one hypothesis, or in two when `two_steps`: over the buffer up
        to STEP_S before their end, then over all of it; each update yielded as it ends (a
        generator: nothing is heard until it is iterated; no samples, no update)."""
        samples = np.asarray(samples, np.float32)
        if not len(samples):
            return
        two = self.two_steps(len(samples) / SAMPLE_RATE)
        self.buffer = np.concatenate([self.buffer, samples])
        first = len(self.buffer) - round(STEP_S * SAMPLE_RATE)
        if two and (self.audible is None or first < self.audible):  # else both would hear the same window
            yield self._update(first)
        yield self._update(len(self.buffer))

    def two_steps(self, new_s: float) -> bool:
        """Whether `new_s` seconds of new audio are heard in two steps: at least 2 x STEP_S of them,
        and two updates at the last update's cost within BUDGET of their duration (never before the
        first update, whose cost is not known)."""
        return (
            self.last_compute_s is not None and new_s >= 2 * STEP_S - 1e-9 and 2 * self.last_compute_s <= BUDGET * new_s
        )

    def _update(self, heard: int) -> StreamUpdate:
        """A hypothesis over buffer[:heard], then the agreement and the trim."""
        options = self._prompted(self.options)
        draft = self.draft  # the last hypothesis's tokens, for the padded window and its fallback alike
        if self.windowed:
            result, self.draft = self.transcriber.transcribe_window(self.buffer[:heard], options, draft)
        else:
            result = self.transcriber.transcribe(self.buffer[:heard], options)
        timings = result.timings  # compute: without a graph compiled on first use (MAX's alignment graph)
        words, held_back = self._hypothesis(result.segments, options)
        if self.windowed and held_back and heard_frames(heard, STREAM_PADDING_S) < N_FRAMES:  # else it heard 30 s
            result, self.draft = self.transcriber.transcribe_window(self.buffer[:heard], options, draft, padding_s=None)
            timings = _one_after_the_other(timings, result.timings)
            words, held_back = self._hypothesis(result.segments, options)
        self.last_compute_s = timings.total_s
        heard_until = self.buffer_start + min(heard, self.audible or heard) / SAMPLE_RATE
        committed = self.policy.update(words, heard_until, self.buffer_start, held_back=bool(held_back))
        if committed and self.options.language is None:  # detected once: a detection hears a 30 s window
            self.options = dataclasses.replace(self.options, language=result.language)
        committed += self._trim()
        return StreamUpdate(committed, list(self.policy.tentative), timings.total_s, held_back, timings, heard_until)

    def finish(self) -> StreamUpdate:
        """The end of the stream: the tentative words are committed as they stand. Where the last
        hypothesis's window failed the rules the offline loop falls back on (`window_failed`), the
        buffer is first heard once more as that loop hears it (`transcribe`: every window, falling back
        through the temperature schedule), and its words up to what it holds back, if any, take the
        tentative ones' place: else the last words, which every window held back, are lost where the offline
        transcript has them. (A hypothesis held back for a repeat or its own text is left so: the offline
        loop's first window decodes as the stream's 30 s window did.) A second call commits nothing."""
        if not self.window_failed:
            return StreamUpdate(self.policy.finish(), [], 0.0, final=True)
        options = self._prompted(dataclasses.replace(self.options, temperature=self.temperatures))
        result = self.transcriber.transcribe(self.buffer, options)
        words, held_back = self._hypothesis(result.segments, options)
        self.window_failed = False
        end = self.buffer_start + len(self.buffer) / SAMPLE_RATE
        return StreamUpdate(
            self.policy.finish(hypothesis=words, heard_from=self.buffer_start, held_back=bool(held_back)),
            [],
            result.timings.total_s,
            held_back,
            result.timings,
            end,
            final=True,
        )

    def _prompted(self, options: DecodeOptions) -> DecodeOptions:
        """`options` with the prompt: the user's, then the committed text before the buffer."""
        before = "".join(w.text for w in self.policy.committed if w.end <= self.buffer_start)
        prompt = ((self.options.initial_prompt or "") + before)[-PROMPT_CHARS:].strip()
        return dataclasses.replace(options, initial_prompt=prompt or None)

    def _hypothesis(self, segments: list[Segment], options: DecodeOptions) -> tuple[list[StreamWord], int]:
        """The words of a transcription's segments (stream time) up to where it is held back
        (`_held_back_from`), without segments of punctuation alone (a decoding at a fallback temperature
        can be a segment of dots), and how many segments are held back (a segment held back from a
        repeat on counts); sets `segment_ends`, `held_back_span` and `window_failed`."""
        failed, cut = self._held_back_from(segments, options)
        kept = [s.words or () for s in segments[:failed]]
        self.segment_ends = [self.buffer_start + s.end for s in segments[:failed]]
        self.held_back_span, self.window_failed = None, False
        if failed < len(segments):
            segment = segments[failed]
            self.window_failed = needs_fallback(
                segment.compression_ratio, segment.avg_logprob, segment.no_speech_prob, options
            )  # a segment holds its window's
            before_repeat = (segment.words or ())[:cut]
            if before_repeat:
                kept.append(before_repeat)
                self.segment_ends.append(self.buffer_start + before_repeat[-1].end)
            self.held_back_span = (
                self.buffer_start + (segment.words[cut].start if before_repeat else segment.start),
                self.buffer_start + segment.end,
            )
        words = [
            StreamWord(self.buffer_start + w.start, self.buffer_start + w.end, w.word)
            for segment_words in kept
            if any(_key(w.word) for w in segment_words)  # not a segment of dots
            for w in segment_words
        ]
        return words, len(segments) - failed

    def _held_back_from(self, segments: list[Segment], options: DecodeOptions) -> tuple[int, int]:
        """Where a hypothesis is held back from: the index of its first segment that fails the offline
        rules or repeats words (`repeat_start`: its own, the segment's before it, or the committed ones
        where it begins after them) and the index of that segment's first word held back (0: all of
        it); (len(segments), 0): nowhere."""
        committed = [_key(w.text) for w in self.policy.committed[-REPEAT_CONTEXT:]]
        last_end = self.policy.committed[-1].end if self.policy.committed else float("-inf")
        previous: list[str] = []
        for i, s in enumerate(segments):
            if fails_offline_rules(s, options):
                return i, 0
            words = [_key(w.word) for w in (s.words or ())]
            before = committed if self.buffer_start + s.start >= last_end - 0.5 and not previous else previous
            cut = repeat_start(words, before[-REPEAT_CONTEXT:])
            if cut is not None:
                return i, cut
            previous = words
        return len(segments), 0

    def _trim(self) -> list[StreamWord]:
        """Past trim_s of buffer, cuts its start off at the place the first cut policy finds: a segment end,
        else a pause between committed words, else, past FORCED_CUT_S, the last committed word or a place
        before the buffer's end. No cut goes past the start of a word heard and not committed: word times
        move between hypotheses, and a committed word's end may lie inside the next word as heard now.
        Returns the words a cut before the end commits."""
        end = self.buffer_start + len(self.buffer) / SAMPLE_RATE
        if end - self.buffer_start <= self.trim_s:
            return []
        cut, forced = self._cut_at_segment_end(end), []
        if cut is None:
            cut = self._cut_in_pause(end)
        if cut is None and end - self.buffer_start > FORCED_CUT_S:
            cut = self._cut_at_last_commit()
            if cut is None:
                cut, forced = self._cut_before_end(end)
        if cut is None:
            return forced
        pending_starts = [w.start for w in self.policy.tentative if w.start > self.buffer_start]
        # at most the whole buffer: a held-back segment can end in the silence a window heard after it
        samples = min(round((min([cut, *pending_starts[:1]]) - self.buffer_start) * SAMPLE_RATE), len(self.buffer))
        if samples > 0:
            self.buffer = self.buffer[samples:]
            self.buffer_start += samples / SAMPLE_RATE
        return forced

    def _committed_end(self) -> float:
        """The end of the last committed word; the buffer's start where none is."""
        return self.policy.committed[-1].end if self.policy.committed else self.buffer_start

    def _cut_at_segment_end(self, end: float) -> float | None:
        """The last end of a hypothesis segment that the committed words reach and that leaves CONTEXT_S
        of audio in the buffer: the committed words after it are heard again, as context for the next."""
        latest = min(self._committed_end(), end - CONTEXT_S)
        cut = max((t for t in self.segment_ends[:-1] if t <= latest), default=None)
        return cut if cut is not None and cut > self.buffer_start else None

    def _cut_in_pause(self, end: float) -> float | None:
        """The middle of the last pause of PAUSE_S or more between committed words that leaves CONTEXT_S
        of audio and WORD_CUT_CONTEXT_S of committed audio, before any held-back segment: a window hears a
        long sentence as one segment, and waiting for its end lets the buffer grow."""
        latest = min(end - CONTEXT_S, self._committed_end() - WORD_CUT_CONTEXT_S, *(self.held_back_span or ())[:1])
        for after, before in pairwise(reversed(self.policy.committed)):
            if before.end <= self.buffer_start:
                break
            middle = (before.end + after.start) / 2
            if after.start - before.end >= PAUSE_S and middle <= latest:
                return middle
        return None

    def _cut_at_last_commit(self) -> float | None:
        """The end of the last committed word, where one is in the buffer."""
        done = self._committed_end()
        return done if done > self.buffer_start else None

    def _cut_before_end(self, end: float) -> tuple[float, list[StreamWord]]:
        """Nothing committed in the buffer (silence, text that keeps changing, or updates slower than the
        audio): KEEP_S before its end, committing the tentative words before the cut rather than losing
        them. A held-back segment is not passed, but by tentative words that a hypothesis before it heard
        there; one at the buffer's start is cut away whole (never committed: the audio after it is heard
        again). Returns the cut and the words committed."""
        forced = self.policy.finish(before=end - KEEP_S)
        cut = forced[-1].end if forced else end - KEEP_S
        if self.held_back_span is not None and not forced:
            start, stop = self.held_back_span
            cut = min(cut, start) if start > self.buffer_start + 0.01 else stop
        return cut, forced


@dataclass(frozen=True)
class StreamReport:
    words: list[StreamWord]  # all committed words
    commit_times: list[float]  # stream time at which each was committed
    compute_s: float  # seconds spent transcribing, all updates together
    audio_s: float
    updates: int
    behind: list[float] = dataclasses.field(default_factory=list)  # per update: see `stream_audio`
    held_back: int = 0  # hypothesis segments left out (offline rules, repeats), all updates and the end together

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words).strip()

    @property
    def latencies(self) -> list[float]:
        """Per word: when it was committed minus when its audio ended."""
        return [t - w.end for w, t in zip(self.words, self.commit_times) if w.spoken]

    def latency_quantile(self, q: float) -> float | None:
        """`quantile` of `latencies`; None when no word was committed."""
        return quantile(self.latencies, q)

    @property
    def compute_share(self) -> float:
        """Seconds of computing per second of audio: above 1, the stream falls behind."""
        return self.compute_s / self.audio_s if self.audio_s else 0.0

    @property
    def loop_ratio(self) -> float:
        """The highest compression ratio of LOOP_WORDS committed words in a row (all of them when
        fewer): speech scores below 2, a committed repetition loop far above the offline loop's
        threshold of 2.4."""
        texts = [w.text for w in self.words]
        n = min(LOOP_WORDS, len(texts))
        return max((compression_ratio("".join(texts[i : i + n])) for i in range(len(texts) - n + 1)), default=0.0)


def stream_audio(
    transcriber: Transcriber,
    audio: np.ndarray,
    chunk_s: float = 1.0,
    options: DecodeOptions = DecodeOptions(),
    on_update=None,
    offset_s: float = 0.0,
) -> StreamReport:
    """Feed `audio` as if it arrived in real time, chunk_s at a time, with the computing time
    counted: the model, once free, takes every chunk that has arrived by then (a chunk that arrives
    while the model is busy waits) and hears it in `Streamer.feed`'s steps. A first chunk of
    `offset_s` (0 <= offset_s < chunk_s; 0: none) shifts every chunk boundary after it by that much,
    so that streams of one clip can be told apart from where its words fall in the chunks. How far
    behind the stream is, when an update ends: the seconds of audio that have arrived and are not yet
    transcribed. on_update(update, now, behind) is called after each update, `now` being the stream time."""
    if not 0 <= offset_s < chunk_s:
        raise ValueError(f"offset {offset_s} s is not at least 0 and below the chunk's {chunk_s} s")
    streamer = Streamer(transcriber, options)
    step = max(1, round(chunk_s * SAMPLE_RATE))
    first = round(offset_s * SAMPLE_RATE)
    ends = [n for n in ([first] if first else []) + list(range(first + step, len(audio), step)) if n < len(audio)]
    ends.append(len(audio))
    arrivals = [(n, n / SAMPLE_RATE) for n in ends if n > 0]  # (samples available, when)
    now, fed, compute_s, updates, held_back = 0.0, 0, 0.0, 0, 0
    words, commit_times, behind = [], [], []
    while fed < len(audio):
        now = max(now, next(t for n, t in arrivals if n > fed))  # wait for the next chunk
        available = max(n for n, t in arrivals if t <= now)
        for update in streamer.feed(audio[fed:available]):
            updates, held_back = updates + 1, held_back + update.held_back
            now += update.compute_s
            compute_s += update.compute_s
            words += update.committed
            commit_times += [now] * len(update.committed)
            behind.append(max(n for n, t in arrivals if t <= now) / SAMPLE_RATE - update.heard_until)
            if on_update is not None:
                on_update(update, now, behind[-1])
        fed = available
    last = streamer.finish()
    now += last.compute_s
    compute_s += last.compute_s
    held_back += last.held_back
    words += last.committed
    commit_times += [now] * len(last.committed)
    if on_update is not None:
        on_update(last, now, 0.0)
    return StreamReport(words, commit_times, compute_s, len(audio) / SAMPLE_RATE, updates, behind, held_back)
