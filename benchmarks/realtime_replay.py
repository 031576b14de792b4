"""A realtime session replayed on a simulated clock: the commit latency of its words with server VAD
(or without), on the same hypotheses' timing from run to run, as `streaming_replay.py` does for a
stream.

    PYTHONPATH=. .venv/bin/python benchmarks/realtime_replay.py [--clip jfk.flac] [--no-vad] [--precision int8]
        [--update-s 0.75]

The clip (the lecture by default) and TAIL_S of silence go to a `RealtimeSession` in 100 ms appends
at 16 kHz, each when its audio would have been spoken, then a commit, as `bench --realtime` sends
them; MAX tiny.en on the CPU transcribes (fp32 unless --precision), its work counted on the clock at
streaming_replay's cost model (the VAD at none). A word's latency is when its delta was sent minus
its audio's end. Prints the latency (median, p90, max; and of each turn's first words), the
computing time per audio second, the slowest words, and, for the lecture, the words wrong against
its pseudo-reference with each difference.
"""

from __future__ import annotations

import argparse
import base64
import json
import os

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from streaming_replay import differences  # noqa: E402

from maxwhisper.audio import SAMPLE_RATE, load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir, pseudo_reference  # noqa: E402
from maxwhisper.bench.cost_model import CostModelled  # noqa: E402
from maxwhisper.bench.realtime import CHUNK_S, TAIL_S, pcm16  # noqa: E402
from maxwhisper.realtime import RealtimeSession, session  # noqa: E402
from maxwhisper.realtime.protocol import WORDS  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402
from maxwhisper.scoring import normalize  # noqa: E402
from maxwhisper.streaming import quantile  # noqa: E402

FIRST_S = 2.0  # a turn's first words: those ending within this much of its start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="physicsworks.flac")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--no-vad", action="store_true", help="one turn, committed by the client at the end")
    p.add_argument("--update-s", type=float, default=session.UPDATE_S, help="realtime.session.UPDATE_S")
    args = p.parse_args()
    session.UPDATE_S = args.update_s
    t = create_transcriber("max", model="tiny.en", device="cpu", precision=args.precision)
    clock, spent = [0.0], [0.0]  # the simulated time, advanced by each transcription's cost; their total

    def spend(cost: float) -> None:
        clock[0] += cost
        spent[0] += cost

    t = CostModelled(t, spend)

    audio = load_audio(audio_dir() / args.clip)
    data = pcm16(audio, SAMPLE_RATE) + bytes(round(TAIL_S * SAMPLE_RATE) * 2)
    step = round(CHUNK_S * SAMPLE_RATE) * 2
    messages = [
        json.dumps({"type": "input_audio_buffer.append", "audio": a})
        for a in (base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step))
    ]
    messages.append(json.dumps({"type": "input_audio_buffer.commit"}))
    arrivals = [min(k + 1, len(messages) - 1) * CHUNK_S for k in range(len(messages))]  # the commit with the last
    s = RealtimeSession(lambda model: t)
    audio_input = {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}}
    if args.no_vad:
        audio_input["turn_detection"] = None
    s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {"type": "transcription", "include": [WORDS], "audio": {"input": audio_input}},
            }
        )
    )

    latencies, first, turns, transcripts, slow = [], [], {}, [], []

    def record(events: list[dict]) -> None:
        for e in events:
            if e["type"] in ("input_audio_buffer.speech_started", "input_audio_buffer.committed"):
                turns.setdefault(e["item_id"], e.get("audio_start_ms", 0) / 1000)
            elif e["type"] == "conversation.item.input_audio_transcription.delta":
                for w in e["words"]:
                    latencies.append(clock[0] - w["end_ms"] / 1000)
                    slow.append((latencies[-1], w["word"], w["end_ms"] / 1000))
                    if w["end_ms"] / 1000 - turns.get(e["item_id"], 0.0) <= FIRST_S:
                        first.append(latencies[-1])
            elif e["type"] == "conversation.item.input_audio_transcription.completed":
                transcripts.append(e["transcript"])
            elif e["type"] == "conversation.item.input_audio_transcription.failed" or (
                e["type"] == "error" and e["error"]["code"] != "input_audio_buffer_commit_empty"
            ):  # (VAD ended it)
                print(json.dumps(e))

    k = 0
    while k < len(messages) or s.has_work():
        while k < len(messages) and arrivals[k] <= clock[0] + 1e-9:
            record(s.receive(messages[k]))
            k += 1
        if s.has_work():
            record(s.work(record))
        elif k < len(messages):
            clock[0] = arrivals[k]
    print(
        f"{args.clip}, UPDATE_S {session.UPDATE_S:g}, {'no VAD' if args.no_vad else 'server VAD'}: "
        f"{len(transcripts)} turns, {len(latencies)} words, latency median {quantile(latencies, 0.5):.2f} s, "
        f"p90 {quantile(latencies, 0.9):.2f} s, max {max(latencies):.2f} s, compute "
        f"{spent[0] / len(audio) * SAMPLE_RATE:.2f} s per audio second; "
        f"turns' first {FIRST_S:g} s: {len(first)} words, "
        f"median {quantile(first, 0.5):.2f} s, p90 {quantile(first, 0.9):.2f} s"
    )
    print(
        "slowest: "
        + ", ".join(f"{word!r} ending at {end:.2f} s {latency:.2f} s" for latency, word, end in sorted(slow)[-5:])
    )
    reference = pseudo_reference(args.clip)
    text = " ".join(transcripts)
    if reference is None:
        print(text)
        return
    wrong, shown = differences(normalize(reference), normalize(text))
    print(f"{wrong} of {len(normalize(reference).split())} words wrong: " + " | ".join(shown))


if __name__ == "__main__":
    main()
