"""Live transcription (`maxwhisper.streaming`): LocalAgreement-2 on scripted hypotheses, the
stream loop over a scripted transcriber (arrival, prompts, trimming, latency, how far behind,
loops held back, forced cuts), and MAX on jfk and on the lecture (one encoder pass per update,
its countdown's repetition loop never committed and decoded once per update)."""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from scripted import ScriptedTranscriber

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, Segment, Word
from maxwhisper.audio import N_FRAMES, N_SAMPLES, STREAM_PADDING_S, heard_frames
from maxwhisper.bench.cost_model import COST_PER_S, COST_S, CostModelled
from maxwhisper.decoding import DecodingTask, compression_ratio
from maxwhisper.streaming import (
    BUDGET,
    CONTEXT_S,
    FORCED_CUT_S,
    PAUSE_S,
    SETTLE_S,
    STEP_S,
    WORD_CUT_CONTEXT_S,
    LocalAgreement,
    Streamer,
    StreamReport,
    StreamWord,
    fails_offline_rules,
    repeat_start,
    stream_audio,
)

LECTURE = Path(__file__).resolve().parent / "audio" / "physicsworks.flac"


def words(text: str, start: float = 0.0, step: float = 0.5) -> list[StreamWord]:
    return [StreamWord(start + i * step, start + (i + 1) * step, " " + w) for i, w in enumerate(text.split())]


def texts(ws: list[StreamWord]) -> str:
    return "".join(w.text for w in ws).strip()


def test_words_are_committed_once_two_hypotheses_agree():
    policy = LocalAgreement()
    assert policy.update(words("hello world")) == []
    assert texts(policy.update(words("Hello, world how"))) == "Hello, world"  # case and punctuation aside
    assert texts(policy.update(words("hello world how are"))) == "how"
    assert texts(policy.committed) == "Hello, world how" and texts(policy.tentative) == "are"
    assert texts(policy.finish()) == "are"
    assert texts(policy.committed) == "Hello, world how are"


def test_a_word_s_ending_punctuation_is_committed_with_the_next_word_as_its_hypothesis_writes_it():
    """A pause after "Americans" ends two windows with a period; the words after the pause take it back.
    The punctuation the last word is owed comes at the stream's end, alone where no word follows."""
    policy = LocalAgreement()
    policy.update(words("my fellow Americans."))
    assert texts(policy.update(words("my fellow Americans. Ask"))) == "my fellow Americans"
    assert [w.text for w in policy.update(words("my fellow Americans, ask not"))] == [", ask"]
    assert [w.text for w in policy.update(words("my fellow Americans, ask not what."))] == [" not"]
    assert texts(policy.committed) == "my fellow Americans, ask not"
    assert [w.text for w in policy.finish()] == [" what."]
    assert texts(policy.committed) == "my fellow Americans, ask not what." and policy.finish() == []

    # as jfk streams: the words after the pause hear "Americans" without punctuation, ending a little
    # after its committed end (a repeat of the committed word, not a new one)
    policy = LocalAgreement()
    policy.update(words("fellow Americans."))
    policy.update(words("fellow Americans."))
    later = [StreamWord(0.0, 0.5, " fellow"), StreamWord(0.5, 1.1, " Americans"), *words("ask not", start=1.1)]
    assert [w.text for w in policy.update(later)] == []
    assert [w.text for w in policy.update(later)] == [" ask", " not"]

    policy = LocalAgreement()
    policy.update(words("for your country."))
    policy.update(words("for your country."))
    last = policy.finish()
    assert [(w.text, w.start, w.end, w.spoken) for w in last] == [(".", 1.5, 1.5, False)]
    assert texts(policy.committed) == "for your country."
    report = StreamReport(policy.committed, [2.0, 2.0, 2.0, 3.0], 1.0, 2.0, 2)
    assert report.text == "for your country." and report.latencies == [1.5, 1.0, 0.5]  # no latency for "."


def test_disagreement_commits_nothing_and_committed_text_never_changes():
    policy = LocalAgreement()
    policy.update(words("I scream"))
    assert policy.update(words("ice cream")) == []
    assert texts(policy.update(words("ice cream please"))) == "ice cream"
    # a later hypothesis that hears the committed words differently cannot change them
    assert texts(policy.update(words("I scream please now"))) == "please"
    assert texts(policy.committed) == "ice cream please"


def test_a_hypothesis_held_back_before_any_new_word_leaves_the_tentative_words_as_they_were():
    """As the lecture's end streamed: the last windows loop ("0, 0, 0"), the end's offline hearing is too
    improbable; neither has a word beyond the committed ones, and neither wipes the words heard before."""
    policy = LocalAgreement()
    policy.update(words("physics works enough"))
    assert texts(policy.update(words("physics works and I'm still alive."))) == "physics works"
    # the committed words, written with a period, then held back: no punctuation owed either
    assert policy.update(words("physics works."), held_back=True) == []
    assert texts(policy.tentative) == "and I'm still alive."
    assert texts(policy.finish(hypothesis=words("physics works."), held_back=True)) == "and I'm still alive."
    assert texts(policy.committed) == "physics works and I'm still alive."
    # a hypothesis with no words that holds nothing back (silence) takes them back, as before
    policy = LocalAgreement()
    policy.update(words("physics works"))
    policy.update([])
    assert policy.tentative == [] and policy.finish() == []
    # a held-back hypothesis with new words of its own is heard as any other: they agree, or replace them
    policy = LocalAgreement()
    policy.update(words("physics works"))
    assert texts(policy.update(words("physics words"), held_back=True)) == "physics"
    assert texts(policy.tentative) == "words"


def test_a_repeat_of_the_committed_tail_is_not_committed_twice():
    policy = LocalAgreement()
    policy.update(words("one two three"))
    assert texts(policy.update(words("one two three four"))) == "one two three"  # they end at 1.5 s
    # after a trim the model hears "three" again, timed just inside the committed end's slack
    again = [StreamWord(1.45, 1.6, " three")] + words("four five", start=1.6)
    assert texts(policy.update(again)) == "four"
    assert texts(policy.update(again + words("six", start=2.6))) == "five"
    assert texts(policy.committed) == "one two three four five"


def test_a_number_written_as_a_word_agrees_with_its_digits_and_is_not_committed_twice():
    """As the lecture's countdown streamed: "3 2 1 0" committed, then a window after a pause writes
    "three two one zero physics", its "zero" ending past the committed "0"."""
    policy = LocalAgreement()
    policy.update(words("three, two, one, zero."))
    assert texts(policy.update(words("3, 2, 1, 0."))) == "3, 2, 1, 0"  # as the committing one writes them
    later = [StreamWord(1.5, 2.6, " zero"), *words("physics works", start=2.6)]
    policy.update(later)
    assert texts(policy.update(later)) == "physics works"
    assert texts(policy.committed) == "3, 2, 1, 0 physics works"


def test_a_word_whose_time_moved_earlier_is_still_committed():
    policy = LocalAgreement()
    policy.update(words("ask not"))
    assert texts(policy.update(words("ask not what"))) == "ask not"  # "not" ends at 1.0 s
    # the next hypotheses time "not" and "what" 0.25 s earlier: "what" now starts before 1.0 s
    shifted = [StreamWord(w.start - 0.25, w.end - 0.25, w.text) for w in words("ask not what your")]
    assert texts(policy.update(shifted)) == "what"
    assert texts(policy.update(shifted + words("country", start=1.75))) == "your"
    assert texts(policy.committed) == "ask not what your"


def test_agreement_counts_only_for_words_each_hypothesis_heard_settle_s_after():
    policy = LocalAgreement()
    policy.update(words("ask not what"), heard_until=2.0)
    # "what" ends at 1.5 s, less than SETTLE_S before the end of what the later hypothesis heard
    assert texts(policy.update(words("ask not what"), heard_until=1.5 + SETTLE_S / 2)) == "ask not"
    assert texts(policy.update(words("ask not what your"), heard_until=2.0)) == ""  # the one before heard too little
    assert texts(policy.update(words("ask not what your"), heard_until=2.5)) == "what"
    # "so that when" (0.5 s a word): two hypotheses that hear "that" wrong agree on it, the first having heard
    # less than SETTLE_S after it; the hypotheses after them hear more and get it right
    policy = LocalAgreement()
    policy.update(words("so it's"), heard_until=1.0 + SETTLE_S / 2)
    assert texts(policy.update(words("so it's"), heard_until=1.0 + 2 * SETTLE_S)) == "so"
    assert texts(policy.update(words("so that when"), heard_until=1.7)) == ""
    assert texts(policy.update(words("so that when it"), heard_until=2.3)) == "that"
    assert texts(policy.committed) == "so that"


def test_a_committed_word_heard_again_with_moved_times_is_not_committed_twice():
    policy = LocalAgreement()
    policy.update(words("ask not what"))
    assert texts(policy.update(words("ask not what"))) == "ask not what"  # "what" ends at 1.5 s
    # heard again as a longer word ending a little later and starting over 1 s before that end
    again = [StreamWord(0.2, 1.55, " what"), *words("your country", start=1.55)]
    assert texts(policy.update(again)) == ""
    assert texts(policy.update(again)) == "your country"
    # the end of a committed word heard as another word ("my" -> "am I"): not a new word
    policy = LocalAgreement()
    policy.update(words("so my"))
    assert texts(policy.update(words("so my fellow"))) == "so my"  # "my" ends at 1.0 s
    am_i = [StreamWord(0.5, 0.9, " am"), StreamWord(0.9, 1.05, " I"), *words("fellow Americans", start=1.05)]
    assert texts(policy.update(am_i)) == "fellow"
    assert texts(policy.committed) == "so my fellow"


def test_the_committed_tail_heard_again_later_is_not_committed_twice_unless_heard_twice():
    policy = LocalAgreement()
    policy.update(words("3, 2, 1, 0."))
    assert texts(policy.update(words("3, 2, 1, 0."))) == "3, 2, 1, 0"  # "0." ends at 2.0 s; "." owed
    # the lecture's countdown after a cut: "0." heard 1.1 s after its committed end (a zero-length
    # word in the silence after it), the words before it as committed
    later = [*words("3, 2, 1,"), StreamWord(3.1, 3.12, " 0."), *words("Physics works", start=4.0)]
    assert texts(policy.update(later) + policy.update(later)) == ". Physics works"
    # the lecture's "Physics" committed 1.4 s before it was said (heard so by two hypotheses), then heard in
    # place by a hypothesis over a buffer from before it, which hears no word before its committed end
    policy = LocalAgreement()
    policy.update(words("0. Physics"))
    policy.update(words("0. Physics"))  # "Physics" 0.5-1.0 s
    in_place = words("Physics works and", start=2.4)
    assert texts(policy.update(in_place, heard_from=0.2) + policy.update(in_place, heard_from=0.2)) == "works and"
    # after a cut at its end the buffer does not hold it: a word said again
    policy = LocalAgreement()
    policy.update(words("0. Physics"))
    policy.update(words("0. Physics"))
    assert (
        texts(policy.update(in_place, heard_from=1.0) + policy.update(in_place, heard_from=1.0)) == "Physics works and"
    )
    # a hypothesis that hears the committed "0." where it was committed, or a little later (mostly
    # before its committed end), and another 1.5 s later: said twice
    for heard_again in ([StreamWord(1.5, 2.0, " 0.")], [StreamWord(1.6, 2.1, " 0.")]):
        policy = LocalAgreement()
        policy.update(words("3, 2, 1, 0."))
        policy.update(words("3, 2, 1, 0."))
        twice = [*words("3, 2, 1,"), *heard_again, *words("0. Physics", start=3.5)]
        assert texts(policy.update(twice) + policy.update(twice)) == ". 0. Physics"


def test_a_short_next_word_overlapping_the_committed_end_is_still_committed():
    policy = LocalAgreement()
    policy.update(words("this is"))
    assert texts(policy.update(words("this is a"))) == "this is"  # "is" ends at 1.0 s
    # heard again, "is" ends 0.15 s sooner and "a" lies mostly before the committed end: a new
    # word all the same, as the word before it is the committed one
    moved = [
        StreamWord(0.0, 0.5, " this"),
        StreamWord(0.5, 0.85, " is"),
        StreamWord(0.85, 1.1, " a"),
        *words("ball", start=1.1),
    ]
    assert texts(policy.update(moved) + policy.update(moved + words("today", start=1.6))) == "a ball"
    assert texts(policy.committed) == "this is a ball"


def test_a_cheap_update_hears_each_chunk_in_two_steps_and_commits_sooner():
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    script = " ".join(f"w{i}" for i in range(20))
    cheap, costly = Slow(script, 0.2), Slow(script, 0.4)
    fast, slow = stream_audio(cheap, audio), stream_audio(costly, audio)
    assert fast.text == slow.text == script
    # 2 x 0.2 s fits in BUDGET of a 1 s chunk: after the first chunk (no cost known yet), each is
    # heard up to STEP_S before its end, then whole; 0.4 s does not fit twice
    assert fast.updates == 1 + 2 * 9 and slow.updates == 10
    assert [n for n, _ in cheap.calls[:5]] == pytest.approx([1.0, 2.0 - STEP_S, 2.0, 3.0 - STEP_S, 3.0])
    assert fast.compute_share == pytest.approx(0.2 * 19 / 10) and fast.compute_share <= BUDGET
    assert statistics.median(fast.latencies) < statistics.median(slow.latencies)


def test_two_steps_where_two_updates_fit_the_budget_and_the_second_hears_step_s_more():
    streamer = Streamer(ScriptedTranscriber(""))
    assert not streamer.two_steps(1.0)  # no update yet: its cost is unknown
    for cost, new_s, two in [(0.2, 1.0, True), (0.35, 1.0, False), (0.1, 2 * STEP_S - 0.1, False), (0.1, 10.0, True)]:
        streamer.last_compute_s = cost
        assert streamer.two_steps(new_s) == two
    heard = ScriptedTranscriber("")
    streamer = Streamer(heard)
    streamer.push(np.zeros(SAMPLE_RATE, np.float32))
    streamer.last_compute_s = 0.1
    assert len(list(streamer.feed(np.zeros(10 * SAMPLE_RATE, np.float32)))) == 2  # a backlog: still two
    assert [n for n, _ in heard.calls] == [1.0, 11.0 - STEP_S, 11.0]


def test_a_window_hears_30_s_at_most_so_a_longer_buffer_is_one_step_and_no_samples_no_update():
    class Windowed(ScriptedTranscriber):
        def transcribe_window(self, audio, options=DecodeOptions(), draft=()):  # as MAX's: the first 30 s only
            return self.transcribe(audio[:N_SAMPLES], options), ()

    streamer = Streamer(Windowed(""))
    streamer.push(np.zeros(SAMPLE_RATE, np.float32))
    streamer.last_compute_s = 0.1  # two steps would fit, but both would hear the same 30 s
    updates = list(streamer.feed(np.zeros(32 * SAMPLE_RATE, np.float32)))
    assert len(updates) == 1 and updates[0].heard_until == pytest.approx(30.0)  # not 33: SETTLE_S counts from 30
    assert list(streamer.feed(np.zeros(0, np.float32))) == []


def test_the_stream_commits_the_script_in_order_with_prompts_and_trimming():
    script = " ".join(f"w{i}" for i in range(80))  # 40 s of "speech"
    audio = np.arange(40 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample holds its own time
    model = ScriptedTranscriber(script)
    report = stream_audio(model, audio, chunk_s=1.0)
    assert report.text == script
    assert report.updates == 40 and report.audio_s == 40.0 and report.compute_share == pytest.approx(0.4)
    assert all(lat >= 0 for lat in report.latencies)
    assert report.commit_times == sorted(report.commit_times)
    assert max(n for n, _ in model.calls) < 30  # the buffer was trimmed
    prompts = [p for _, p in model.calls if p]
    assert prompts and all(p.startswith("w") for p in prompts)


def test_text_that_never_settles_is_committed_at_the_forced_cut_not_lost():
    class Unsettled(ScriptedTranscriber):  # every hypothesis spells each word differently
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            tag = f"v{len(self.calls)}"
            segments = [
                dataclasses.replace(seg, words=tuple(dataclasses.replace(w, word=w.word + tag) for w in seg.words))
                for seg in result.segments
            ]
            return dataclasses.replace(result, segments=segments)

    audio = np.arange(60 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    report = stream_audio(Unsettled(" ".join(f"w{i}" for i in range(120))), audio, chunk_s=1.0)
    heard = [w.text.strip().split("v")[0] for w in report.words]
    assert heard == [f"w{i}" for i in range(120)]  # every word, once, in order
    early = [t for w, t in zip(report.words, report.commit_times) if w.end <= 20]
    assert early and max(early) < 40  # committed at a cut during the stream, not only at its end


def test_silence_keeps_the_buffer_short_and_the_user_prompt_comes_first():
    audio = np.arange(40 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    silent = ScriptedTranscriber("")
    report = stream_audio(silent, audio, chunk_s=1.0, options=DecodeOptions(initial_prompt="Physics lecture."))
    assert report.text == "" and report.words == []
    assert max(n for n, _ in silent.calls) <= 26  # cut 5 s before its end once past 25 s, though nothing was said
    assert {prompt for _, prompt in silent.calls} == {"Physics lecture."}
    talk = ScriptedTranscriber(" ".join(f"w{i}" for i in range(80)))
    stream_audio(talk, audio, chunk_s=1.0, options=DecodeOptions(initial_prompt="Physics lecture."))
    later = [p for _, p in talk.calls if p and p != "Physics lecture."]
    assert later and all(p.startswith("Physics lecture.") or len(p) >= 190 for p in later)


class Slow(ScriptedTranscriber):
    """Takes `compute_s` per update."""

    def __init__(self, script: str, compute_s: float):
        super().__init__(script)
        self.compute_s = compute_s

    def transcribe(self, audio, options=DecodeOptions(), progress=None):
        result = super().transcribe(audio, options, progress)
        return dataclasses.replace(result, timings=dataclasses.replace(result.timings, total_s=self.compute_s))


def test_an_offset_shifts_every_chunk_boundary_and_the_stream_commits_the_same_text():
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    script = " ".join(f"w{i}" for i in range(20))
    shifted = Slow(script, 0.4)  # one step per chunk: each call hears the audio up to a chunk boundary
    assert stream_audio(shifted, audio, offset_s=0.25).text == script
    assert [n for n, _ in shifted.calls] == pytest.approx([0.25, *(k + 0.25 for k in range(1, 10)), 10.0])
    unshifted = Slow(script, 0.4)
    stream_audio(unshifted, audio)
    assert [n for n, _ in unshifted.calls] == pytest.approx(list(range(1, 11)))
    for offset in (-0.1, 1.0):
        with pytest.raises(ValueError, match="offset"):
            stream_audio(Slow(script, 0.4), audio, offset_s=offset)


def test_how_far_behind_the_stream_is():
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    script = " ".join(f"w{i}" for i in range(20))
    assert stream_audio(Slow(script, 0.5), audio).behind == [0.0] * 10
    slow = stream_audio(Slow(script, 2.5), audio)  # each update takes the 2 s or 3 s that arrived meanwhile
    assert slow.behind == [2.0, 3.0, 2.0, 2.0, 0.0]
    assert slow.text == script  # late, not lost


LOOP = " 3, 2, 1." * 30


def loop_segment(start: float, end: float, **values) -> Segment:
    """A countdown loop as whisper writes one: 90 words over [start, end)."""
    texts = LOOP.split(" ")[1:]
    step = (end - start) / len(texts)
    words = tuple(Word(start + i * step, start + (i + 1) * step, " " + t, 0.9) for i, t in enumerate(texts))
    return Segment(1, 0, start, end, LOOP, (), words=words, **values)


def test_the_offline_rules_on_a_hypothesis_segment():
    options = DecodeOptions()
    fine = Segment(0, 0, 0.0, 2.0, " Physics works.", (), avg_logprob=-0.3, compression_ratio=1.2)
    assert not fails_offline_rules(fine, options)
    assert compression_ratio(LOOP) > 2.4 and fails_offline_rules(loop_segment(0, 4), options)  # its own text
    assert fails_offline_rules(dataclasses.replace(fine, compression_ratio=2.5), options)  # its window's
    assert fails_offline_rules(dataclasses.replace(fine, avg_logprob=-1.5), options)
    silence = dataclasses.replace(fine, avg_logprob=-1.5, no_speech_prob=0.9)  # as the offline loop: no fallback
    assert not fails_offline_rules(silence, options)
    off = DecodeOptions(compression_ratio_threshold=None, logprob_threshold=None)
    assert not fails_offline_rules(loop_segment(0, 4), off)


def test_a_repetition_loop_is_never_committed():
    class Looping(ScriptedTranscriber):  # every hypothesis ends in the same countdown loop
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            n = len(audio) / SAMPLE_RATE
            return dataclasses.replace(result, segments=[*result.segments, loop_segment(n - 0.5, n)])

    script = " ".join(f"w{i}" for i in range(60))
    audio = np.arange(30 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    updates = []
    report = stream_audio(Looping(script), audio, on_update=lambda update, now, behind: updates.append(update))
    assert report.text == script  # every word heard, none of the loop's
    assert report.held_back == 30 and report.loop_ratio < 2.4  # (its own text fails: the end hears nothing again)
    assert all("3," not in w.text for u in updates for w in u.tentative)  # not even shown as tentative


def test_a_failed_window_waits_for_more_audio():
    class Failing(ScriptedTranscriber):  # the 5th to 9th updates' windows fail (too improbable)
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            if 5 <= len(self.calls) <= 9:
                return dataclasses.replace(
                    result, segments=[dataclasses.replace(s, avg_logprob=-2.0) for s in result.segments]
                )
            return result

    script = " ".join(f"w{i}" for i in range(40))
    audio = np.arange(20 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    report = stream_audio(Failing(script), audio)
    assert report.text == script and report.held_back == 5
    times = dict(zip((w.text.strip() for w in report.words), report.commit_times))
    assert times["w6"] >= 10  # heard in the 4th update, committed only once the windows pass again


def test_the_last_words_of_windows_that_fail_are_heard_once_more_at_the_end():
    class FailingFrom17s(ScriptedTranscriber):  # a stream's windows fail once they hear past 17 s
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            temperatures.append(options.temperature)
            fails = len(options.temperature) == 1 and round(float(audio[0]), 3) + len(audio) / SAMPLE_RATE > 17
            return dataclasses.replace(
                result,
                segments=[  # (the offline loop's later temperatures pass)
                    dataclasses.replace(s, avg_logprob=-2.0 if fails else -0.2) for s in result.segments
                ],
            )

    script = " ".join(f"w{i}" for i in range(40))
    audio = np.arange(20 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    temperatures, ends = [], []
    report = stream_audio(FailingFrom17s(script), audio, on_update=lambda u, now, behind: ends.append(u))
    assert report.text == script  # the words after ~16 s committed too, at the end
    assert ends[-1].final and len(ends[-1].committed) > 4 and ends[-1].timings is not None
    assert temperatures[-1] == DecodeOptions().temperature and len(temperatures) == report.updates + 1
    assert report.compute_s == pytest.approx(0.4 * (report.updates + 1))  # the end's transcription counted
    # a stream whose last window passed ends without another transcription
    temperatures.clear()
    report = stream_audio(FailingFrom17s(script), audio[: 16 * SAMPLE_RATE])
    assert report.text == " ".join(script.split()[:32]) and len(temperatures) == report.updates


def test_the_end_heard_again_commits_once_and_no_segment_of_dots():
    class DotsThenWords(ScriptedTranscriber):  # windows fail; the offline loop hears dots, then the words
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            if len(options.temperature) == 1:
                return dataclasses.replace(
                    result, segments=[dataclasses.replace(s, avg_logprob=-2.0) for s in result.segments]
                )
            dots = Segment(0, 0, 0.0, 0.0, " . .", (), words=(Word(0.0, 0.0, " .", 0.5), Word(0.0, 0.0, " .", 0.5)))
            return dataclasses.replace(result, segments=[dots, *result.segments])

    streamer = Streamer(DotsThenWords("w0 w1 w2 w3"))
    audio = np.arange(2 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    assert streamer.push(audio).committed == [] and streamer.window_failed
    assert texts(streamer.finish().committed) == "w0 w1 w2 w3"
    calls = len(streamer.transcriber.calls)
    assert streamer.finish().committed == [] and len(streamer.transcriber.calls) == calls  # a second end: nothing


def test_a_stream_without_a_language_keeps_the_one_its_first_committed_words_were_heard_in():
    class German(ScriptedTranscriber):  # detects German where no language is set
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            languages.append(options.language)
            return dataclasses.replace(result, language=options.language or "de", language_probability=0.9)

    languages = []
    audio = np.arange(6 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    streamer = Streamer(German("w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"))
    first_commit = None
    for i in range(6):
        if streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]).committed and first_commit is None:
            first_commit = i
    assert 0 < first_commit < 5  # the first hypothesis heard words, and committed none
    assert languages == [None] * (first_commit + 1) + ["de"] * (5 - first_commit)
    languages.clear()
    streamer = Streamer(German("w0 w1 w2 w3"), DecodeOptions(language="fr"))  # one set is kept as it is
    for i in range(3):
        streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE])
    assert languages == ["fr", "fr", "fr"]


class Echoing(ScriptedTranscriber):
    """Hears the script, then fills the silence after it with its last ECHO_WORDS words again (as a
    window over speech and silence does): in the script's segment, or as a segment of its own."""

    ECHO_WORDS = 5

    def __init__(self, script: str, own_segment: bool):
        super().__init__(script)
        self.own_segment = own_segment

    def transcribe(self, audio, options=DecodeOptions(), progress=None):
        result = super().transcribe(audio, options, progress)
        offset, end = round(audio[0], 3), round(audio[0], 3) + len(audio) / SAMPLE_RATE
        script_end = len(self.script) * 0.5
        if not result.segments or end < script_end + 2.0 or result.segments[-1].end + offset < script_end - 1e-6:
            return result
        echo = tuple(
            Word(script_end + 0.3 * i - offset, script_end + 0.3 * (i + 1) - offset, " " + w, 0.9)
            for i, w in enumerate(self.script[-self.ECHO_WORDS :])
        )
        last = result.segments[-1]
        if self.own_segment:
            segments = [
                *result.segments,
                Segment(1, 0, echo[0].start, echo[-1].end, "".join(w.word for w in echo), (), words=echo),
            ]
        else:
            words = (*last.words, *echo)
            segments = [
                *result.segments[:-1],
                dataclasses.replace(last, end=echo[-1].end, text="".join(w.word for w in words), words=words),
            ]
        return dataclasses.replace(result, segments=segments)


@pytest.mark.parametrize(
    "before, words, start",
    [
        ([], "physics works and im still alive physics works and im still alive", 6),  # in the segment
        ("physics works and im still alive", "physics works and im still alive", 0),  # after the one before
        ("x ask not what your", "ask not what your country", 0),  # the copy begins before the segment
        ([], "three two one three two one", None),  # shorter than REPEAT_WORDS
        ("ask not what your country can do", "for you ask what you can do for your country", None),
    ],
)
def test_repeat_start(before, words, start):
    assert repeat_start(words.split(), before.split() if before else []) == start


@pytest.mark.parametrize("own_segment", [False, True])
def test_words_repeating_the_words_before_them_are_never_committed(own_segment):
    """ "Physics works and I'm still alive." heard again in the silence after it: the offline rules pass
    it (a short sentence twice compresses little), the repeat is held back, the words before it are kept."""
    script = " ".join(f"w{i}" for i in range(16))  # 8 s of speech, then 6 s of silence
    audio = np.arange(14 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    model = Echoing(script, own_segment)
    assert not fails_offline_rules(
        model.transcribe(audio, DecodeOptions(word_timestamps=True)).segments[-1], DecodeOptions()
    )
    model.calls.clear()
    report = stream_audio(model, audio, chunk_s=1.0)
    assert report.text == script and report.held_back > 0
    assert len(model.calls) == report.updates  # a repeat held back: the end hears nothing again


def test_a_window_that_fails_or_repeats_is_heard_again_as_the_30_s_window():
    """A padded window repeats what it heard into its silence; the 30 s window over the same audio
    does not: that one is the hypothesis, and nothing waits."""

    class PaddedEchoing(Echoing):
        def __init__(self, script):
            super().__init__(script, own_segment=False)
            self.paddings = []

        def transcribe_window(self, audio, options=DecodeOptions(), draft=(), padding_s=STREAM_PADDING_S):
            self.paddings.append(padding_s)
            heard = (Echoing if padding_s is not None else ScriptedTranscriber).transcribe(self, audio, options)
            return heard, ()

    script = " ".join(f"w{i}" for i in range(16))
    model = PaddedEchoing(script)
    report = stream_audio(model, np.arange(14 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE, chunk_s=1.0)
    assert report.text == script and report.held_back == 0
    fallbacks = [i for i, p in enumerate(model.paddings) if p is None]
    assert fallbacks and all(model.paddings[i - 1] == STREAM_PADDING_S for i in fallbacks)
    assert len(model.paddings) == report.updates + len(fallbacks)  # one 30 s window more per repeat, no more


def test_a_window_held_back_is_heard_again_only_where_it_heard_less_than_30_s():
    class Looping(ScriptedTranscriber):  # every window hears a loop
        def transcribe_window(self, audio, options=DecodeOptions(), draft=(), padding_s=STREAM_PADDING_S):
            self.paddings.append(padding_s)
            return dataclasses.replace(self.transcribe(audio, options), segments=[loop_segment(0.0, 4.0)]), ()

    model = Looping("")
    model.paddings = []
    streamer = Streamer(model)
    update = streamer.push(np.zeros(10 * SAMPLE_RATE, np.float32))
    assert model.paddings == [STREAM_PADDING_S, None] and update.held_back == 1
    assert update.compute_s == update.timings.total_s == pytest.approx(0.8)  # both windows' computing
    model.paddings.clear()
    update = streamer.push(np.zeros(16 * SAMPLE_RATE, np.float32))  # 26 s and 5 s of silence: 30 s heard
    assert model.paddings == [STREAM_PADDING_S] and update.compute_s == pytest.approx(0.4)


class Pausing(ScriptedTranscriber):
    """Hears the script with a pause of PAUSE_S + 0.1 after every 4th word (its end that much sooner)."""

    def transcribe(self, audio, options=DecodeOptions(), progress=None):
        result = super().transcribe(audio, options, progress)
        offset = round(float(audio[0]), 3) if len(audio) else 0.0
        ws = tuple(
            dataclasses.replace(w, end=w.end - (PAUSE_S + 0.1) * (round((w.end + offset) / 0.5) % 4 == 0))
            for s in result.segments
            for w in s.words
        )
        return dataclasses.replace(result, segments=[dataclasses.replace(s, words=ws) for s in result.segments])


def test_a_cut_in_a_pause_never_passes_a_held_back_segment():
    class LoopFrom14s(Pausing):  # once 14 s are heard, the stream's 4-6 s are heard as a loop
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            offset = round(float(audio[0]), 3)
            if offset + len(audio) / SAMPLE_RATE < 14 or not result.segments:
                return result
            ws = tuple(w for w in result.segments[0].words if w.end + offset <= 4 + 1e-6)
            loop_start = max(0.0, 4 - offset)
            return dataclasses.replace(
                result,
                segments=[
                    *([Segment(0, 0, ws[0].start, ws[-1].end, "", (), words=ws)] if ws else []),
                    loop_segment(loop_start, loop_start + 2),
                ],
            )

    audio = np.arange(20 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    streamer = Streamer(LoopFrom14s(" ".join(f"w{i}" for i in range(40))))
    for i in range(20):
        streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE])
        assert streamer.buffer_start <= 4.0 + 1e-6  # words up to ~13 s were committed before the loop
    # cut in the pause before the loop (3.7-4.0 s), though words up to ~13 s were committed
    assert streamer.policy.committed[-1].end > 4 + WORD_CUT_CONTEXT_S and streamer.buffer_start == pytest.approx(3.85)


class Respelled:
    """Hears words of 0.7 s, each update spelled differently, so that no two hypotheses agree:
    only forced cuts commit anything."""

    backend, model, device, precision, load_s, compile_s = "respelled", "none", "cpu", "fp32", 0.0, 0.0

    def __init__(self):
        self.calls = 0

    def transcribe(self, audio, options=DecodeOptions(), progress=None):
        from maxwhisper.api import Timings, TranscriptionResult

        self.calls += 1
        offset, n = round(float(audio[0]), 3), len(audio) / SAMPLE_RATE
        first = int(np.ceil(offset / 0.7 - 1e-6))
        ws = tuple(
            Word(i * 0.7 - offset, (i + 1) * 0.7 - offset, f" w{i}v{self.calls}", 0.9)
            for i in range(first, int((offset + n) / 0.7 + 1e-6))
        )
        # (no segment text: so many respelled words compress like a loop)
        segments = [Segment(0, 0, ws[0].start, ws[-1].end, "", (), words=ws)] if ws else []
        return TranscriptionResult(
            "", segments, "en", "respelled", "none", "cpu", "fp32", n, Timings(total_s=0.1), options
        )


@pytest.mark.parametrize("drift_s", [0.0, 0.2])
def test_a_cut_at_a_segment_end_leaves_context_s_of_audio_before_the_words_to_commit(drift_s):
    """drift_s: every other hypothesis hears each word that much later, so the committed words heard
    again after a cut end past where they were committed."""

    class Sentences(ScriptedTranscriber):  # a segment every 4 words (2 s)
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            ws = result.segments[0].words if result.segments else ()
            shift = drift_s * (len(self.calls) % 2)
            ws = [
                dataclasses.replace(w, start=w.start + shift, end=min(w.end + shift, len(audio) / SAMPLE_RATE))
                for w in ws
            ]
            heard.append((round(audio[0], 3) if len(audio) else 0.0, options.initial_prompt))
            groups = [ws[i : i + 4] for i in range(0, len(ws), 4)]
            return dataclasses.replace(
                result, segments=[Segment(0, 0, g[0].start, g[-1].end, "", (), words=tuple(g)) for g in groups]
            )

    audio = np.arange(60 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    heard = []  # (buffer start s, prompt) of each hypothesis
    streamer = Streamer(Sentences(" ".join(f"w{i}" for i in range(120))))
    committed, starts, kept = [], [0.0], []
    for i in range(60):
        committed += streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]).committed
        if streamer.buffer_start != starts[-1]:
            starts.append(streamer.buffer_start)
            kept.append(len(streamer.buffer) / SAMPLE_RATE)
    committed += streamer.finish().committed
    assert len(starts) > 3 and all(abs(s / 2 - round(s / 2)) < 1e-3 for s in starts)  # at segment ends
    assert min(kept) >= CONTEXT_S  # with the committed words before the next ones still heard
    assert [w.text for w in committed] == [f" w{i}" for i in range(120)]  # each word once, in order
    assert sum(1 for _, prompt in heard if prompt) > 10
    for start, prompt in heard:  # the prompt is what was committed before the buffer, none of what it holds
        said = [int(w) for w in re.findall(r"w(\d+)", prompt or "")]
        assert not said or max(said) < start / 0.5 + 1e-6


@pytest.mark.parametrize("pauses", [True, False])
def test_speech_without_a_segment_end_is_cut_in_a_pause_between_committed_words_leaving_context_s(pauses):
    script = " ".join(f"w{i}" for i in range(120))  # 60 s of "speech" heard as one segment
    audio = np.arange(60 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    model = Pausing(script) if pauses else ScriptedTranscriber(script)
    streamer = Streamer(model)
    committed, cuts = [], []  # (buffer start, seconds kept) after each cut
    for i in range(60):
        committed += streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]).committed
        if streamer.buffer_start != (cuts[-1][0] if cuts else 0.0):
            cuts.append((streamer.buffer_start, len(streamer.buffer) / SAMPLE_RATE))
    committed += streamer.finish().committed
    assert [w.text for w in committed] == [f" w{i}" for i in range(120)]  # each word once, in order
    if pauses:  # cut in the middle of a pause (every 2 s, 0.35 s before the next word), not FORCED_CUT_S
        assert max(n for n, _ in model.calls) <= streamer.trim_s + 1
        assert len(cuts) >= 5 and all(
            abs((c + (PAUSE_S + 0.1) / 2) / 2 - round((c + (PAUSE_S + 0.1) / 2) / 2)) < 1e-3 for c, _ in cuts
        )
        assert min(kept for _, kept in cuts) >= CONTEXT_S
    else:  # words without a pause between them (a window's times may move by tenths): not cut before FORCED_CUT_S
        assert max(n for n, _ in model.calls) > FORCED_CUT_S


def test_a_forced_cut_never_splits_a_word_and_loses_no_audio():
    audio = np.arange(70 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    streamer = Streamer(Respelled())
    committed, cuts, longest = [], [], 0
    for i in range(70):
        committed += streamer.push(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]).committed
        cuts.append(streamer.buffer_start)
        longest = max(longest, len(streamer.buffer) / SAMPLE_RATE)
    committed += streamer.finish().committed
    assert len(set(cuts)) > 3 and longest <= 26
    assert all(abs(c / 0.7 - round(c / 0.7)) < 1e-3 for c in cuts)  # every cut between two words
    assert [w.text.split("v")[0] for w in committed] == [f" w{i}" for i in range(100)]  # each word once, in order


def test_a_forced_cut_keeps_the_audio_after_a_held_back_segment():
    class LoopAt2s(ScriptedTranscriber):  # hears the stream's 2-4 s (w4 to w7) as a countdown loop, always
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            offset = round(float(audio[0]), 3)
            ws = [w for s in result.segments for w in s.words]
            before = tuple(w for w in ws if w.end + offset <= 2 + 1e-6)
            after = tuple(w for w in ws if w.start + offset >= 4 - 1e-6)
            segments = [
                Segment(0, 0, p[0].start, p[-1].end, "".join(w.word for w in p), (), words=p)
                for p in (before, after)
                if p
            ]
            if any(2 - 1e-6 <= w.start + offset < 4 for w in ws):
                segments.insert(len(segments) - bool(after), loop_segment(max(0.0, 2 - offset), 4 - offset))
            return dataclasses.replace(result, segments=segments)

    script = " ".join(f"w{i}" for i in range(80))  # 40 s of "speech"
    audio = np.arange(40 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    model = LoopAt2s(script)
    report = stream_audio(model, audio)
    assert report.loop_ratio < 2.4 and not any("3," in w.text for w in report.words)  # the loop never committed
    assert max(n for n, _ in model.calls) <= 26  # cut past 25 s though nothing after the loop could be committed
    # the forced cut passed the held-back loop only: every word after it is heard and committed, none lost
    assert report.text == " ".join(f"w{i}" for i in [0, 1, 2, 3, *range(8, 80)])


def test_a_forced_cut_past_a_loop_ending_in_the_padding_keeps_the_buffer_in_stream_time():
    class LoopIntoThePadding(ScriptedTranscriber):  # hears a loop from the buffer's start to 3 s past its end
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            return dataclasses.replace(result, segments=[loop_segment(0.0, len(audio) / SAMPLE_RATE + 3)])

    streamer = Streamer(LoopIntoThePadding(""))
    for i in range(30):
        streamer.push(np.zeros(SAMPLE_RATE, np.float32))
        assert streamer.buffer_start + len(streamer.buffer) / SAMPLE_RATE == pytest.approx(i + 1)
    assert streamer.buffer_start > 0 and streamer.policy.committed == []


class Hypotheses(ScriptedTranscriber):
    """Hears the given hypotheses in turn: lists of (start, end, word), buffer times."""

    def __init__(self, *hypotheses: list[tuple[float, float, str]]):
        super().__init__("")
        self.hypotheses = list(hypotheses)

    def transcribe(self, audio, options=DecodeOptions(), progress=None):
        result = super().transcribe(audio, options, progress)
        ws = tuple(Word(a, b, " " + w, 0.9) for a, b, w in self.hypotheses.pop(0))
        return dataclasses.replace(result, segments=[Segment(0, 0, ws[0].start, ws[-1].end, "", (), words=ws)])


def test_a_cut_at_the_committed_end_does_not_split_the_next_word_as_heard_now():
    abc = [(0.0, 0.5, "ask"), (0.5, 1.0, "not"), (1.0, 1.5, "what")]
    streamer = Streamer(
        Hypotheses(
            abc,
            abc + [(1.5, 2.0, "you")],
            [(0.0, 0.4, "ask"), (0.4, 0.8, "not"), (0.8, 1.2, "what"), (1.2, 2.0, "your")],
        )
    )
    silence = np.zeros(16 * SAMPLE_RATE, np.float32)
    streamer.push(silence[: 5 * SAMPLE_RATE])
    assert texts(streamer.push(silence[: 5 * SAMPLE_RATE]).committed) == "ask not what"  # "what" ends at 1.5 s
    # 26 s buffered, no segment end: cut at the committed "what", though the latest hypothesis's "your"
    # starts at 1.2 s
    streamer.push(silence)
    assert streamer.buffer_start == pytest.approx(1.2) and texts(streamer.policy.tentative) == "your"


def test_a_window_transcriber_is_asked_for_one_window():
    class Windowed(ScriptedTranscriber):
        windows = 0

        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            raise AssertionError("the whole seek loop was asked for")

        def transcribe_window(self, audio, options=DecodeOptions(), draft=()):
            self.windows += 1
            return ScriptedTranscriber.transcribe(self, audio, options), ()

    model = Windowed("w0 w1 w2 w3 w4 w5")
    report = stream_audio(model, np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE)
    assert model.windows == 3 and report.text == "w0 w1 w2 w3 w4 w5"


def report_with_latencies(latencies: list[float]) -> StreamReport:
    ws = words(" ".join(f"w{i}" for i in range(len(latencies))))
    return StreamReport(
        ws, [w.end + lat for w, lat in zip(ws, latencies)], compute_s=1.0, audio_s=10.0, updates=len(latencies)
    )


def test_latency_quantile_is_the_sorted_value_at_index_floor_q_n():
    report = report_with_latencies([3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert report.latencies == [3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert report.latency_quantile(0.9) == 10.0  # sorted[int(0.9 * 10)] = sorted[9]
    assert report.latency_quantile(0.5) == 6.0  # sorted[5]: the upper middle, not the average 5.5
    assert report.latency_quantile(0.0) == 1.0 and report.latency_quantile(1.0) == 10.0  # (clamped to n - 1)
    five = report_with_latencies([0.5, 2.5, 1.5, 4.5, 3.5])
    assert five.latency_quantile(0.9) == 4.5 and five.latency_quantile(0.5) == 2.5 and five.latency_quantile(0.2) == 1.5
    assert report_with_latencies([]).latency_quantile(0.9) is None  # nothing was committed
    with pytest.raises(ValueError):
        report.latency_quantile(90)


def test_stream_command_reports_the_median_and_p90_of_the_commit_latency(tmp_path, monkeypatch, capsys):
    import maxwhisper.__main__ as cli
    import maxwhisper.audio

    path = tmp_path / "talk.wav"
    path.write_bytes(b"")  # (only checked to exist: the audio comes from load_audio below)
    audio = np.arange(12 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    script = " ".join(f"w{i}" for i in range(24))
    monkeypatch.setattr(cli, "load_transcriber", lambda args, backend, kernels=None: ScriptedTranscriber(script))
    monkeypatch.setattr(maxwhisper.audio, "load_audio", lambda p, max_seconds=None: audio)
    assert cli.main(["stream", str(path)]) == 0
    out, err = capsys.readouterr()
    report = stream_audio(ScriptedTranscriber(script), audio, chunk_s=1.0)
    lat = sorted(report.latencies)
    assert len(lat) == 24 and report.latency_quantile(0.9) == lat[21]
    assert report.behind == [0.0] * 12  # each update (0.4 s) ends before the next chunk arrives
    assert (
        f"{path}: 12.0 s in {report.updates} updates; commit latency median {(lat[11] + lat[12]) / 2:.2f} s, "
        f"p90 {lat[21]:.2f} s; behind the stream median 0.00 s, max 0.00 s (audio not yet transcribed as an "
        f"update ends); compute {report.compute_share:.2f} s per audio second\n"
    ) in err
    # w1 ends where the first hypothesis stopped hearing: the second and third commit it
    assert "(committed at   2.40 s,  0.0 s behind) w0\n" in out
    assert "(committed at   3.40 s,  0.0 s behind) w1 w2\n" in out
    assert out.strip().splitlines()[-1] == script
    silent = ScriptedTranscriber("")
    monkeypatch.setattr(cli, "load_transcriber", lambda args, backend, kernels=None: silent)
    assert cli.main(["stream", str(path)]) == 0
    assert f"{path}: 12.0 s in 12 updates; nothing was said; behind the stream median 0.00 s" in capsys.readouterr().err


def test_a_cost_modelled_transcriber_reports_the_model_s_seconds_for_what_each_window_heard():
    class Windowed(ScriptedTranscriber):
        def transcribe_window(self, audio, options=DecodeOptions(), draft=(), padding_s=STREAM_PADDING_S):
            return self.transcribe(audio, options), (1, 2)

    costs = []
    model = CostModelled(Windowed("a b c d"), costs.append, speed_factor=2.0)
    options = DecodeOptions(word_timestamps=True)
    two_s = np.zeros(2 * SAMPLE_RATE, np.float32)
    result, tokens = model.transcribe_window(two_s, options)  # 2 s and the padding heard
    assert tokens == (1, 2) and result.text == " a b c d"
    assert model.transcribe_window(two_s, options, padding_s=None)[0].timings.total_s == costs[-1]  # 30 s heard
    model.transcribe(two_s, options)  # a seek loop: as one 30 s window
    assert costs == pytest.approx(
        [2 * (COST_S + COST_PER_S * (2 + STREAM_PADDING_S))] + [2 * (COST_S + COST_PER_S * 30)] * 2
    )
    assert result.timings.total_s == costs[0] and model.backend == "scripted"  # everything else is the transcriber's
    with pytest.raises(TypeError, match="no single window"):
        CostModelled(ScriptedTranscriber("a"))


def test_max_streams_jfk(max_tiny_en, jfk_audio):
    from whisper.normalizers import EnglishTextNormalizer

    report = stream_audio(CostModelled(max_tiny_en), jfk_audio, chunk_s=1.0)  # the same updates on any machine
    normalise = EnglishTextNormalizer()
    assert normalise(report.text) == normalise(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    )
    assert report.updates >= 2 and all(lat >= 0 for lat in report.latencies)
    assert report.compute_share > 0


def test_stream_command_prints_committed_text_and_latency():
    import subprocess
    import sys
    from pathlib import Path

    from whisper.normalizers import EnglishTextNormalizer

    root = Path(__file__).resolve().parents[1]
    jfk = root / "tests" / "audio" / "jfk.flac"
    p = subprocess.run(
        [sys.executable, "-m", "maxwhisper", "stream", str(jfk), "--backend", "faster", "--threads", "2"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("[00:00.000 --> ") and "(committed at" in lines[0]
    normalise = EnglishTextNormalizer()
    assert normalise(lines[-1]) == normalise(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    )
    assert "commit latency median" in p.stderr and "Traceback" not in p.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "maxwhisper", "stream", "nope.wav", "--chunk", "0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--chunk" in bad.stderr and "Traceback" not in bad.stderr


def counting_encodes(model):
    """Counts MAX's encoder passes (the instance attribute shadows the method until deleted)."""
    encode, model.net.calls = model.net.encode, []

    def counted(mel):
        model.net.calls.append(mel.shape)
        return encode(mel)

    model.net.encode = counted
    return model.net.calls


def test_max_window_is_the_seek_loop_s_first_window_in_one_encoder_pass(max_tiny_en, lecture_60s_audio):
    audio = lecture_60s_audio[30 * SAMPLE_RATE : 40 * SAMPLE_RATE]  # the seek loop decodes its end again
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,))
    calls = counting_encodes(max_tiny_en)
    try:
        whole = max_tiny_en.transcribe(audio, options)
        assert len(calls) == 2
        window, _ = max_tiny_en.transcribe_window(audio, options, padding_s=None)  # the 30 s window
        assert len(calls) == 3
    finally:
        del max_tiny_en.net.encode, max_tiny_en.net.calls
    first = [s for s in whole.segments if s.seek == 0]
    assert window.segments == first and len(first) < len(whole.segments)


def test_max_window_encodes_its_audio_and_stream_padding_s_of_silence_not_30_s(max_tiny_en, lecture_60s_audio):
    from whisper.normalizers import EnglishTextNormalizer

    audio = lecture_60s_audio[30 * SAMPLE_RATE : 40 * SAMPLE_RATE]
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,))
    calls = counting_encodes(max_tiny_en)
    try:
        short, _ = max_tiny_en.transcribe_window(audio, options)
        whole, _ = max_tiny_en.transcribe_window(audio, options, padding_s=None)
    finally:
        del max_tiny_en.net.encode, max_tiny_en.net.calls
    assert STREAM_PADDING_S == 5.0 and calls == [(1, 80, 1500), (1, 80, 3000)]  # 10 s + 5 s, then 30 s
    normalise = EnglishTextNormalizer()
    assert normalise(short.text).startswith(normalise(whole.text)) and whole.text  # maybe more words at the end
    assert 0 <= short.segments[0].words[0].start and short.segments[-1].words[-1].end <= 10.0


def test_a_short_window_s_repetition_loop_stops_at_the_stream_s_token_cap(max_tiny_en, jfk_audio):
    """jfk's first second and STREAM_PADDING_S of silence loop "and so, and so, ...": 224 tokens
    before the cap, which made a stream's first update cost seconds. The padded window stops at
    `stream_sample_len`; the 30 s window is not capped, and hears "And so..."."""
    from maxwhisper.windows import stream_sample_len

    options = DecodeOptions(temperature=(0.0,))
    _, looped = max_tiny_en.transcribe_window(jfk_audio[:SAMPLE_RATE], options)
    whole, decoded = max_tiny_en.transcribe_window(jfk_audio[:SAMPLE_RATE], options, padding_s=None)
    assert len(looped) == stream_sample_len(1.0) == 26
    assert len(decoded) < 26 and whole.text.strip().startswith("And so")


def test_max_int8_streams_jfk_hearing_my_not_am_i(max_tiny_en_int8, jfk_audio):
    """int8's hypotheses over 2.5-3 s of jfk within 30 s windows heard "so am I fellow" and agreed on
    it; over those seconds and STREAM_PADDING_S of silence they hear "so my fellow", as offline."""
    from whisper.normalizers import EnglishTextNormalizer

    three_s = jfk_audio[: 3 * SAMPLE_RATE]
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,))
    assert "so my fellow" in max_tiny_en_int8.transcribe_window(three_s, options)[0].text
    report = stream_audio(CostModelled(max_tiny_en_int8), jfk_audio, chunk_s=1.0)
    assert "so my fellow americans" in EnglishTextNormalizer()(report.text)


@pytest.fixture(scope="module")
def lecture_audio() -> np.ndarray:
    from maxwhisper.audio import load_audio

    return load_audio(LECTURE)


def test_max_never_commits_the_lecture_countdown_loop_nor_falls_back_in_temperature(
    max_tiny_en, lecture_audio, monkeypatch
):
    countdown = lecture_audio[189 * SAMPLE_RATE : 201 * SAMPLE_RATE]  # at temperature 0 a loop: "I'm going to go to..."
    streamer = Streamer(max_tiny_en, DecodeOptions())  # the offline schedule: 6 temperatures, best_of 5
    assert streamer.options.temperature == (0.0,)
    padded, _ = max_tiny_en.transcribe_window(countdown, streamer.options)
    whole, _ = max_tiny_en.transcribe_window(countdown, streamer.options, padding_s=None)
    assert all(
        any(fails_offline_rules(s, streamer.options) for s in hypothesis.segments) for hypothesis in (padded, whole)
    )
    decodings, run = [], DecodingTask.run

    def counted(task, *args, **kwargs):
        decodings.append(task.options)
        return run(task, *args, **kwargs)

    monkeypatch.setattr(DecodingTask, "run", counted)
    encodes = counting_encodes(max_tiny_en)
    try:
        update = streamer.push(countdown)  # the window's decoding fails as a whole: nothing of it is kept
    finally:
        del max_tiny_en.net.encode, max_tiny_en.net.calls
    # the padded window (12 s heard, 5 s of silence) fails, then the 30 s window: no temperature fallback
    assert [shape[-1] for shape in encodes] == [heard_frames(len(countdown), STREAM_PADDING_S), N_FRAMES]
    assert [d.temperature for d in decodings] == [0.0, 0.0]
    assert update.committed == update.tentative == [] and update.held_back == len(whole.segments)
    # the end hears it once more with the offline fallback: segments of dots (temperature 0.8), then a
    # sentence too improbable (1.0), neither committed
    assert streamer.finish().committed == []

    # the last 53 s, each update timed by the cost model so that it hears the same windows on any machine:
    # one as fast as MAX on a 2-core Zen 4, one three times slower, the chunks' boundaries shifted apart
    for speed_factor, offset_s in ((1.0, 0.0), (3.0, 0.5)):
        report = stream_audio(
            CostModelled(max_tiny_en, speed_factor=speed_factor),
            lecture_audio[150 * SAMPLE_RATE :],
            1.0,
            offset_s=offset_s,
        )
        assert report.loop_ratio < 2.4
        # its padded windows repeat the last sentence into their silence: it is committed once, whole
        assert report.text.lower().count("still alive") == 1 and "works and i'm still alive" in report.text.lower()


def test_max_window_checks_the_last_hypothesis_as_a_draft_and_decodes_the_same(
    max_tiny_en, lecture_60s_audio, monkeypatch
):
    from maxwhisper.graph.model import MaxInference

    audio = lecture_60s_audio[30 * SAMPLE_RATE : 40 * SAMPLE_RATE]
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,), initial_prompt="Physics works.")
    steps, step = [], MaxInference._step

    def counted(inference, tokens, *args):
        steps.append(tokens.shape[1] - inference.cached)  # tokens run by this call
        return step(inference, tokens, *args)

    monkeypatch.setattr(MaxInference, "_step", counted)

    def window(heard_s: float, draft: tuple[int, ...]):
        steps.clear()
        result, decoded = max_tiny_en.transcribe_window(audio[: round(heard_s * SAMPLE_RATE)], options, draft)
        return result, decoded, list(steps)

    _, draft, _ = window(9.7, ())  # what the hypothesis over 9.7 s decoded
    alone, decoded, alone_steps = window(10.0, ())
    drafted, drafted_decoded, drafted_steps = window(10.0, draft)
    wrong, wrong_decoded, _ = window(10.0, tuple(reversed(draft)))
    assert decoded == drafted_decoded == wrong_decoded != ()  # the next draft, whatever this one was
    assert len(alone_steps) > 20  # a call per token after the prompt's

    def text_and_times(result):
        return [(s.tokens, s.start, s.end, s.words) for s in result.segments]

    # the model's tokens, words and times
    assert text_and_times(drafted) == text_and_times(alone) == text_and_times(wrong)
    for result in drafted, wrong:  # log probabilities from other calls of the decoder: rounded apart
        assert [s.avg_logprob for s in result.segments] == pytest.approx(
            [s.avg_logprob for s in alone.segments], abs=1e-4
        )
    # the tokens the last hypothesis decoded run in the prompt's call: few calls follow it
    assert drafted_steps[0] > len(draft) and len(drafted_steps) < len(alone_steps) / 2


def test_a_stream_s_draft_is_its_own_last_hypothesis_never_another_stream_s():
    """Two streams fed from one transcriber (the stream command and the benchmark, clip after clip;
    the app's streams side by side) each start from no draft and go on from their own."""

    class Drafting(ScriptedTranscriber):
        def __init__(self, script):
            super().__init__(script)
            self.drafts_given = []

        def transcribe_window(self, audio, options=DecodeOptions(), draft=()):
            self.drafts_given.append(tuple(draft))
            return self.transcribe(audio, options), (len(self.drafts_given),)  # "the tokens this window decoded"

    model = Drafting("a b c d")
    first, second = Streamer(model), Streamer(model)
    list(first.feed(np.zeros(SAMPLE_RATE, np.float32)))
    list(second.feed(np.zeros(SAMPLE_RATE, np.float32)))
    list(first.feed(np.zeros(SAMPLE_RATE, np.float32)))
    assert model.drafts_given[:2] == [(), ()]  # each stream's first hypothesis: no draft
    assert model.drafts_given[2] == (1,) and first.draft == (3,) and second.draft == (2,)
