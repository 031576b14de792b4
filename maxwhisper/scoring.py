"""Scoring transcripts, the same in the app and the benchmark: openai-whisper's EnglishTextNormalizer,
then word error rate (jiwer), agreement between two transcripts, and the word diff the app shows."""

from __future__ import annotations

import html
from collections.abc import Iterable

_normalizer = None


def normalize(text: str) -> str:
    """openai-whisper's EnglishTextNormalizer (lower case, no punctuation, spelled-out numbers and
    contractions made uniform: "ten dollars" and "$10" agree), single spaces."""
    global _normalizer
    if _normalizer is None:
        from whisper.normalizers import EnglishTextNormalizer  # imports torch: only when text is scored

        _normalizer = EnglishTextNormalizer()
    return " ".join(_normalizer(text).split())


def _align(ref: str, hyp: str):
    import jiwer

    return jiwer.process_words(ref, hyp)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int] | None:
    """(substitutions + deletions + insertions, reference words) after normalising both texts;
    None when the normalised reference has no words (WER undefined)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    n = len(ref.split())
    if n == 0:
        return None
    if not hyp:
        return n, n  # everything deleted
    out = _align(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, n


def wer(reference: str, hypothesis: str) -> float | None:
    """Word error rate (0..1, can exceed 1 with insertions) of hypothesis against reference."""
    counts = word_errors(reference, hypothesis)
    return None if counts is None else counts[0] / counts[1]


def pooled_wer(pairs: Iterable[tuple[str, str]]) -> float | None:
    """WER over several (reference, hypothesis) pairs: all errors / all reference words."""
    errors = words = 0
    for reference, hypothesis in pairs:
        counts = word_errors(reference, hypothesis)
        if counts is not None:
            errors, words = errors + counts[0], words + counts[1]
    return errors / words if words else None


def agreement(openai_text: str, text: str) -> float | None:
    """1 - WER of `text` taking openai-whisper's transcript as the reference, floored at 0."""
    w = wer(openai_text, text)
    return None if w is None else max(0.0, 1.0 - w)


def word_diff(reference: str, hypothesis: str, context: int | None = None) -> tuple[float | None, str]:
    """(`wer(reference, hypothesis)`, HTML of the word diff), both on normalised words.

    The WER is 0 when neither text has a word. In the diff, words of the reference that the
    hypothesis lacks are struck through in red, words it has instead or in addition are green.
    `context`: of the words both share, only this many on each side of a difference are shown, the
    rest as "…" (None: all of them).
    """
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return (0.0 if not hyp else None), html.escape(hyp)
    if not hyp:
        return 1.0, _deleted(ref)
    out = _align(ref, hyp)
    ref_words, hyp_words = out.references[0], out.hypotheses[0]
    parts = []
    chunks = out.alignments[0]
    for i, chunk in enumerate(chunks):
        removed = " ".join(ref_words[chunk.ref_start_idx : chunk.ref_end_idx])
        added = " ".join(hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx])
        if chunk.type == "equal":
            parts.append(
                _shared(hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx], context, i > 0, i < len(chunks) - 1)
            )
            continue
        if chunk.type in ("substitute", "delete"):
            parts.append(_deleted(removed))
        if chunk.type in ("substitute", "insert"):
            parts.append(
                f'<ins style="color:#15803d;background:#dcfce7;text-decoration:none">{html.escape(added)}</ins>'
            )
    return out.wer, " ".join(parts)


def _shared(words: list[str], context: int | None, after: bool, before: bool) -> str:
    """Words both texts have, where a difference comes `after` them and/or `before` them: only
    `context` words next to each difference, the rest as "…" (all of them where nothing differs)."""
    if context is None or not (after or before) or len(words) <= context * (after + before):
        return html.escape(" ".join(words))
    head = words[:context] if after else []
    tail = words[len(words) - context :] if before else []
    return " ".join(html.escape(" ".join(part)) for part in (head, ["…"], tail) if part)


def _deleted(words: str) -> str:
    return f'<del style="color:#b91c1c">{html.escape(words)}</del>'
