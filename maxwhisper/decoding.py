"""Decoding of 30 s windows in numpy, independent of the network's backend.

A port of `whisper.decoding` (openai-whisper 20250625) that keeps its structure and its numbers:
with the same logits it picks the same tokens (greedy and beam search); its float32 log
probabilities are the exact ones to within an ulp, and a float32 reference's are within
`logprob_tolerance` of them (see "numerics" below). Only
temperature sampling differs, since numpy's random numbers are not torch's; it draws from a
`numpy.random.Generator`, so runs are reproducible.

The network is behind two small protocols, `WhisperModel` and `Inference`, implemented by the
MAX backend (`maxwhisper.graph`) and by the PyTorch reference in the tests.

    TokenDecoder     GreedyDecoder (argmax, or sampling at temperature > 0), BeamSearchDecoder
    LogitFilter      SuppressBlank, SuppressTokens, ApplyTimestampRules
    SequenceRanker   MaximumLikelihoodRanker
    DecodingTask     runs one decoding of a batch of windows with all of the above
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from .api import MaxWhisperError
from .audio import CHUNK_LENGTH
from .checkpoint import ModelDims
from .tokenizer import Tokenizer, tokenizer_for

# --- the seam to the network -----------------------------------------------------------------


class Inference(Protocol):
    """One decoding's forward passes through the text decoder, with a KV cache."""

    def logits(self, tokens: np.ndarray, audio_features: Any, positions: Sequence[int] = (-1,)) -> np.ndarray:
        """Logits of the next token after some positions of `tokens`.

        tokens: int64 [batch, n], the whole sequence so far. The KV cache holds the first k
        tokens from earlier calls; only tokens[:, k:] are run now (all n on the first call).
        positions: indices into the n tokens (negative allowed), all among the newly run ones.
        Returns float32 logits [batch, len(positions), n_vocab]. `audio_features` is what
        `WhisperModel.encode` returned for n_audio windows; batch = n_audio * n_group, each
        audio's group contiguous (like repeat_interleave): the inference repeats features itself.
        """
        ...

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        """Beam search: row i of the cache becomes the old row source_indices[i] (called only
        when that changes the order)."""
        ...

    def cleanup_caching(self) -> None:
        """Drop the KV cache; the next `logits` call starts from an empty cache again."""
        ...


class RewindingInference(Inference, Protocol):
    """An inference whose KV cache can forget its last tokens (MAX): `DecodingTask` checks a draft
    with it (`WindowOptions.draft`)."""

    def rewind(self, n: int) -> None:
        """Keep the first n tokens in the KV cache; the next `logits` call runs the tokens after them."""
        ...


class ChoosingInference(Inference, Protocol):
    """An inference that also picks the greedy token itself (MAX does it inside the step graph),
    so the host need not look at the logits. `DecodingTask` uses it for greedy decoding at
    temperature 0 when the inference has this method."""

    def logits_and_choice(
        self,
        tokens: np.ndarray,
        audio_features: Any,
        positions: Sequence[int],
        suppress: np.ndarray,
        timestamp_begin: int,
        rows: np.ndarray | None = None,
        logits_wanted: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """`logits(tokens, audio_features, positions)`, and after the last position the token
        that the logit filters and `GreedyDecoder` at temperature 0 would pick, with its log
        probability. suppress: float32 [k, n_vocab], 0 or -inf, what `LogitFilter.suppress`
        wrote into zeros; timestamp_begin: the first timestamp token (n_vocab: no timestamp rule).
        rows: the k rows of the batch whose results are wanted, ascending (None: all of them); the
        others sit the call out (their next token is not needed: they have ended), and are never
        stepped again. Returns (logits float32 [k, len(positions), n_vocab], tokens int64 [k], log
        probabilities float32 [k]); logits_wanted False: None for the logits, which a GPU then
        need not copy to the host."""
        ...


@dataclass(frozen=True)
class RunRules:
    """What a run of greedy steps in the graph needs of the logit filters and the tokens so far
    (`RunningInference.greedy_run`): the graph applies `ApplyTimestampRules` itself from these."""

    suppress: np.ndarray  # float32 [n_batch, n_vocab]: what the filters suppress at every step
    timestamp_begin: int  # n_vocab: no timestamp rules
    eot: int
    previous: np.ndarray  # int64 [n_batch]: the token before the last (a timestamp: none sampled)
    last_timestamp: np.ndarray  # int64 [n_batch]: the last sampled timestamp; -1: none


class RunningInference(ChoosingInference, Protocol):
    """A choosing inference that also takes several greedy steps in one call (MAX's token run
    graph): the host then meets the device once a run instead of once a token."""

    steps_per_call: int  # the steps of a run; 1: no runs

    def greedy_run(self, tokens: np.ndarray, audio_features: Any, rules: RunRules) -> tuple[np.ndarray, np.ndarray]:
        """The next `steps_per_call` greedy tokens of every row after tokens [n_batch, n], whose last
        token is not in the KV cache yet, with the logit filters' choices: tokens int64 [n_batch, K]
        and their log probabilities float32 [n_batch, K]. A row's steps after its eot are not read."""
        ...


class WhisperModel(Protocol):
    dims: ModelDims
    is_multilingual: bool
    num_languages: int
    alignment_heads: np.ndarray | None  # [k, 2] (layer, head) for word timing; None: openai's default

    def encode(self, mel: np.ndarray) -> Any:
        """float32 [n_audio, n_mels, frames] -> opaque audio features for `Inference.logits`; frames:
        3000 (a 30 s window), fewer for a stream's window that hears its audio and some silence."""
        ...

    def inference(self) -> Inference:
        """A fresh inference with an empty KV cache."""
        ...

    def alignment(self, tokens: np.ndarray, audio_features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Word timing: the whole sequence tokens int64 [n] through the decoder at once, against
        the features of one window -> (logits float32 [n, n_vocab], cross-attention scores before
        the softmax float32 [n_text_layer, n_text_head, n, n_audio_ctx])."""
        ...


# --- numerics ---------------------------------------------------------------------------------
#
# The log-softmax over the vocabulary is what every log probability here comes from (beam ranking,
# avg_logprob for the fallback and no-speech rules). It is computed to be right on its own terms,
# not to imitate one vendor kernel's summation order: x - max(x) in float32 as everyone does, the
# sum of exp(x - max) over the vocabulary in float64, its log rounded once to float32. That is the
# exact log-softmax of the float32 logits to within one float32 ulp of the result (or of
# log(sum), when that is larger), on any CPU.
#
# Another implementation sums in float32 (PyTorch's CPU kernel in 8 lanes with AVX2, 16 with
# AVX-512; GPUs in trees), and its sum of n terms, each through at most d float32 additions, is off
# by up to d * u relative (u = 2^-24), a one-sided loss that really reaches a good part of that
# (docs/design.md#numerics). The tolerances below are that bound for 8 lanes, the fewest a CPU
# reference sums in, plus the roundings after the sum on both sides: what the tests allow, and what
# `transcribe` reports a threshold decision as too close to call within.

UNIT_ROUNDOFF = 2.0**-24  # float32
REFERENCE_LANES = 8  # the fewest float32 lanes a CPU reference sums in (PyTorch's AVX2 and default kernels)


def _normaliser_error(n: int) -> float:
    """Relative error bound of a float32 sum of exp over n entries: the exp of each term (2u),
    ceil(n / 8) - 1 additions in a lane, the tail added into a lane, a 3-level tree over the lanes."""
    return (-(-n // REFERENCE_LANES) + 5) * UNIT_ROUNDOFF


def probability_tolerance(n: int) -> float:
    """The relative difference a float32 softmax over n entries may have from ours: the
    normaliser's error, the term's own exp (2u) and the division (1/2 ulp on each side)."""
    return _normaliser_error(n) + 4 * UNIT_ROUNDOFF


def logprob_tolerance(n: int, magnitude: float = 1.0) -> float:
    """The absolute difference a float32 log-softmax value over n entries may have from ours: the
    normaliser's relative error (its log's absolute error), the float32 log of it and the final
    subtraction of values up to `magnitude` (1/2 ulp each, on each side). For an average of k log
    probabilities summed in float32, pass the sum's size as magnitude: each of its additions
    rounds by at most 1/2 ulp of it, on each side."""

    def ulp(x: float) -> float:
        return float(np.spacing(np.float32(max(abs(x), 1.0))))

    return _normaliser_error(n) + ulp(np.log(n)) + 2 * ulp(magnitude)


# x - max(x) [..., n_vocab] and log(sum(exp(x - max(x)))) [..., 1]: log_softmax = the first - the second
LogSoftmaxParts = tuple[np.ndarray, np.ndarray]


def _shift_and_exp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x - max(x) in float32, and exp of it in float64, over the last axis."""
    x = logits.astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted, np.exp(shifted, dtype=np.float64)


def _shift_and_log_sum(logits: np.ndarray) -> LogSoftmaxParts:
    """x - max(x) and log(sum(exp(x - max(x)))) over the last axis: float32, the sum in float64."""
    shifted, e = _shift_and_exp(logits)
    return shifted, np.log(e.sum(axis=-1, keepdims=True)).astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log_softmax over the last axis, within an ulp of the exact value (see above)."""
    shifted, log_sum = _shift_and_log_sum(logits)
    return shifted - log_sum


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis, computed in float64 and rounded once."""
    _, e = _shift_and_exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """softmax(logits)[i, index[i]] for each row i of logits [n, k], without dividing the whole
    array. The normaliser sums float32 exps in float64 (numpy's float32 exp is within ~3 float32 ulps
    of the float64 exps `softmax` sums: far inside `probability_tolerance`); the chosen term's exp is
    float64. (Word probabilities cover a whole window's text: float64 exps cost several times more.)"""
    x = logits.astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    chosen = np.exp(shifted[np.arange(len(index)), index], dtype=np.float64)
    return (chosen / np.exp(shifted, out=shifted).sum(axis=-1, dtype=np.float64)).astype(np.float32)


def logsumexp(x: np.ndarray) -> np.float32:
    """float32 log(sum(exp(x))) of a 1-d array, the sum in float64."""
    m = x.max()
    if not np.isfinite(m):
        return m
    return np.float32(np.log(np.exp(x - m, dtype=np.float64).sum())) + m


def compression_ratio(text: str) -> float:
    """How much zlib compresses the text: high for repetitive (looping) output."""
    text_bytes = text.encode("utf-8")
    return len(text_bytes) / len(zlib.compress(text_bytes))


# --- options and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class WindowOptions:
    """How to decode one window: `whisper.decoding.DecodingOptions` without fp16 and lang_id.

    `maxwhisper.transcribe` builds one per window and temperature from the user-facing
    `maxwhisper.api.DecodeOptions`.
    """

    task: str = "transcribe"  # or "translate"
    language: str | None = None  # None: detected from the audio
    temperature: float = 0.0
    sample_len: int | None = None  # most tokens to sample; default n_text_ctx // 2
    best_of: int | None = None  # independent samples at temperature > 0
    beam_size: int | None = None  # beams at temperature 0; None: greedy
    patience: float | None = None  # beam search patience (arxiv:2204.05424)
    length_penalty: float | None = None  # Google NMT's alpha; None: divide by length
    prompt: str | tuple[int, ...] | None = None  # previous context, after <|startofprev|>
    prefix: str | tuple[int, ...] | None = None  # forced start of the current window's text
    suppress_tokens: str | Iterable[int] | None = "-1"  # "-1": the non-speech symbol set
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    # tokens the greedy decoding at temperature 0 is expected to begin with (a live stream's last
    # hypothesis): checked in one forward pass, the decoding going on token by token from the
    # first the model would not choose (`DecodingTask`); ignored otherwise
    draft: tuple[int, ...] = ()


@dataclass(frozen=True)
class DecodingResult:
    language: str
    language_probs: dict[str, float] | None = None
    tokens: list[int] = field(default_factory=list)  # sampled tokens, without sot sequence and eot
    text: str = ""
    avg_logprob: float = np.nan
    no_speech_prob: float = np.nan
    temperature: float = np.nan
    compression_ratio: float = np.nan


# --- language identification ----------------------------------------------------------------


def detect_language(
    model: WhisperModel, audio_features: Any, n_audio: int = 1, tokenizer: Tokenizer | None = None
) -> tuple[list[int], list[dict[str, float]]]:
    """The most probable language token of each window, and the probabilities of all languages
    (a softmax over the language tokens only), from the logits after <|startoftranscript|>."""
    if tokenizer is None:
        tokenizer = tokenizer_for(model.is_multilingual, num_languages=model.num_languages)
    if tokenizer.language is None or tokenizer.language_token not in tokenizer.sot_sequence:
        raise MaxWhisperError("This model doesn't have language tokens so it can't perform lang id")

    inference = model.inference()
    try:
        tokens = np.full((n_audio, 1), tokenizer.sot, dtype=np.int64)
        logits = np.array(inference.logits(tokens, audio_features, (0,))[:, 0], dtype=np.float32)
    finally:
        inference.cleanup_caching()

    mask = np.ones(logits.shape[-1], dtype=bool)
    mask[list(tokenizer.all_language_tokens)] = False
    logits[:, mask] = -np.inf
    language_tokens = logits.argmax(axis=-1).tolist()
    probs = softmax(logits)
    language_probs = [
        {c: float(probs[i, j]) for j, c in zip(tokenizer.all_language_tokens, tokenizer.all_language_codes)}
        for i in range(n_audio)
    ]
    return language_tokens, language_probs


# --- ranking finished sequences --------------------------------------------------------------


class SequenceRanker:
    def rank(self, tokens: list[list[list[int]]], sum_logprobs: list[list[float]]) -> list[int]:
        """Given groups of candidate sequences and their summed log probabilities, the index of
        the candidate to keep in each group."""
        raise NotImplementedError


class MaximumLikelihoodRanker(SequenceRanker):
    """The highest log probability, divided by the length or by Google NMT's length penalty."""

    def __init__(self, length_penalty: float | None):
        self.length_penalty = length_penalty

    def rank(self, tokens, sum_logprobs):
        def scores(logprobs, lengths):
            result = []
            for logprob, length in zip(logprobs, lengths):
                if self.length_penalty is None:
                    penalty = length
                else:
                    penalty = ((5 + length) / 6) ** self.length_penalty
                result.append(logprob / penalty)
            return result

        lengths = [[len(t) for t in s] for s in tokens]
        return [int(np.argmax(scores(p, n))) for p, n in zip(sum_logprobs, lengths)]


# --- choosing the next token -----------------------------------------------------------------


class TokenDecoder:
    def reset(self) -> None:
        """Forget the state of the previous decoding."""

    def update(
        self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray, parts: LogSoftmaxParts | None = None
    ) -> tuple[np.ndarray, bool]:
        """Append the next token to each sequence.

        tokens: int64 [n_batch, n], all tokens so far including the initial ones; logits: float32
        [n_batch, n_vocab] at the last position, filtered; sum_logprobs: float32 [n_batch],
        updated in place; parts: `_shift_and_log_sum(logits)` when a filter already computed it.
        Returns the tokens [n_batch, n + 1] and whether all are finished.
        """
        raise NotImplementedError

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray) -> tuple[list[list[list[int]]], list[list[float]]]:
        """tokens [n_audio, n_group, n], sum_logprobs [n_audio, n_group] -> for each audio, the
        candidate sequences (each ending with eot) and their summed log probabilities."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """Argmax at temperature 0, otherwise a sample from softmax(logits / temperature)."""

    def __init__(self, temperature: float, eot: int, rng: np.random.Generator):
        self.temperature = temperature
        self.eot = eot
        self.rng = rng

    def update(self, tokens, logits, sum_logprobs, parts=None):
        if self.temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:  # Gumbel-max: argmax(logits / T + Gumbel noise) is a sample of softmax(logits / T)
            with np.errstate(divide="ignore"):  # a uniform draw of exactly 0 gives -inf: never chosen
                gumbel = -np.log(-np.log(self.rng.random(logits.shape, dtype=np.float32)))
            next_tokens = (logits / np.float32(self.temperature) + gumbel).argmax(axis=-1)

        shifted, log_sum = parts or _shift_and_log_sum(logits)  # the chosen token's log_softmax, not all
        return self.append(
            tokens, next_tokens, shifted[np.arange(shifted.shape[0]), next_tokens] - log_sum[:, 0], sum_logprobs
        )

    def append(
        self, tokens: np.ndarray, next_tokens: np.ndarray, logprobs: np.ndarray, sum_logprobs: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """`update` once the next tokens [n_batch] and their log probabilities are chosen."""
        not_finished = tokens[:, -1] != self.eot
        sum_logprobs += logprobs * not_finished

        next_tokens[~not_finished] = self.eot
        tokens = np.concatenate([tokens, next_tokens[:, None].astype(tokens.dtype)], axis=-1)
        completed = bool((tokens[:, -1] == self.eot).all())
        return tokens, completed

    def finalize(self, tokens, sum_logprobs):
        # make sure each sequence has at least one eot at the end
        tokens = np.pad(tokens, ((0, 0), (0, 0), (0, 1)), constant_values=self.eot)
        return [[t.tolist() for t in group] for group in tokens], sum_logprobs.tolist()


def _topk(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values of a 1-d array and their indices, largest first."""
    idx = np.argpartition(row, -k)[-k:]
    idx = idx[np.argsort(-row[idx], kind="stable")]
    return row[idx], idx


class BeamSearchDecoder(TokenDecoder):
    """Beam search, keeping `beam_size` live beams per audio, until round(beam_size * patience)
    finished candidates are collected."""

    def __init__(self, beam_size: int, eot: int, inference: Inference, patience: float | None = None):
        self.beam_size = beam_size
        self.eot = eot
        self.inference = inference
        self.patience = patience or 1.0
        self.max_candidates: int = round(beam_size * self.patience)
        self.finished_sequences: list[dict[tuple[int, ...], float]] | None = None
        if self.max_candidates <= 0:
            raise MaxWhisperError(f"Invalid beam size ({beam_size}) or patience ({patience})")

    def reset(self):
        self.finished_sequences = None

    def update(self, tokens, logits, sum_logprobs, parts=None):
        if tokens.shape[0] % self.beam_size != 0:
            raise ValueError(f"{tokens.shape}[0] % {self.beam_size} != 0")

        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:  # the first update
            self.finished_sequences = [{} for _ in range(n_audio)]

        logprobs = parts[0] - parts[1] if parts else log_softmax(logits)
        next_tokens, source_indices, finished_sequences = [], [], []
        for i in range(n_audio):
            scores, sources, finished = {}, {}, {}

            # 1. the cumulative log probability of each candidate continuation
            for j in range(self.beam_size):
                idx = i * self.beam_size + j
                prefix = tokens[idx].tolist()
                for logprob, token in zip(*_topk(logprobs[idx], self.beam_size + 1)):
                    sequence = tuple(prefix + [int(token)])
                    scores[sequence] = float(sum_logprobs[idx] + logprob)  # float32 sum
                    sources[sequence] = idx

            # 2. keep the best beam_size unfinished ones; set the finished ones aside
            saved = 0
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == self.eot:
                    finished[sequence] = scores[sequence]
                else:
                    sum_logprobs[len(next_tokens)] = scores[sequence]
                    next_tokens.append(sequence)
                    source_indices.append(sources[sequence])
                    saved += 1
                    if saved == self.beam_size:
                        break
            finished_sequences.append(finished)

        tokens = np.array(next_tokens, dtype=np.int64)
        if source_indices != list(range(len(source_indices))):
            self.inference.rearrange_kv_cache(source_indices)

        for previously_finished, newly_finished in zip(self.finished_sequences, finished_sequences):
            for seq in sorted(newly_finished, key=newly_finished.get, reverse=True):
                if len(previously_finished) >= self.max_candidates:
                    break  # the candidate list is full
                previously_finished[seq] = newly_finished[seq]

        # done when every audio has enough finished candidates
        completed = all(len(sequences) >= self.max_candidates for sequences in self.finished_sequences)
        return tokens, completed

    def finalize(self, preceding_tokens, sum_logprobs):
        # when too few sequences finished, add the unfinished ones (best first)
        for i, sequences in enumerate(self.finished_sequences):
            if len(sequences) < self.beam_size:
                for j in list(np.argsort(sum_logprobs[i]))[::-1]:
                    sequence = preceding_tokens[i, j].tolist() + [self.eot]
                    sequences[tuple(sequence)] = float(sum_logprobs[i][j])
                    if len(sequences) >= self.beam_size:
                        break
        tokens = [[list(seq) for seq in sequences] for sequences in self.finished_sequences]
        sum_logprobs = [list(sequences.values()) for sequences in self.finished_sequences]
        return tokens, sum_logprobs


# --- rules on the logits ---------------------------------------------------------------------


class LogitFilter:
    def suppress(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Set to -inf, in place, the logits [n_batch, n_vocab] of tokens that may not come next,
        given all tokens so far [n_batch, n]. It looks only at the tokens, so applied to zeros it
        gives the additive mask that `ChoosingInference.logits_and_choice` takes."""
        raise NotImplementedError

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> LogSoftmaxParts | None:
        """Filter logits [n_batch, n_vocab] in place, given all tokens so far [n_batch, n].

        A filter that computes `_shift_and_log_sum` of the logits it leaves returns it, so the
        token decoder need not compute it again."""
        self.suppress(logits, tokens)
        return None

    def suppress_at_every_step(self, logits: np.ndarray) -> None:
        """What `suppress` writes at every step after the first whatever the tokens, for a run of
        steps in the graph (`RunningInference`), whose own rules are `ApplyTimestampRules`'s."""
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    """No blank (a space or eot) as the first sampled token."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin

    def suppress(self, logits, tokens):
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.tokenizer.encode(" ") + [self.tokenizer.eot]] = -np.inf

    def suppress_at_every_step(self, logits):
        pass


class SuppressTokens(LogitFilter):
    def __init__(self, suppress_tokens: Sequence[int]):
        self.suppress_tokens = list(suppress_tokens)

    def suppress(self, logits, tokens):
        logits[:, self.suppress_tokens] = -np.inf

    def suppress_at_every_step(self, logits):
        logits[:, self.suppress_tokens] = -np.inf


class ApplyTimestampRules(LogitFilter):
    """Timestamps come in pairs (except right before eot) and never decrease; the first token is
    a timestamp no later than max_initial_timestamp; and a timestamp is forced whenever all the
    timestamps together are more probable than any single text token."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None):
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def suppress(self, logits, tokens):
        ts_begin = self.tokenizer.timestamp_begin
        # <|notimestamps|> is the without_timestamps option's business
        logits[:, self.tokenizer.no_timestamps] = -np.inf

        for k in range(tokens.shape[0]):
            sampled_tokens = tokens[k, self.sample_begin :]
            seq = sampled_tokens.tolist()
            last_was_timestamp = len(seq) >= 1 and seq[-1] >= ts_begin
            penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= ts_begin

            if last_was_timestamp:
                if penultimate_was_timestamp:  # has to be non-timestamp
                    logits[k, ts_begin:] = -np.inf
                else:  # cannot be normal text tokens
                    logits[k, : self.tokenizer.eot] = -np.inf

            timestamps = sampled_tokens[sampled_tokens >= ts_begin]
            if timestamps.size > 0:
                # timestamps don't decrease, and each segment has a nonzero length
                if last_was_timestamp and not penultimate_was_timestamp:
                    timestamp_last = timestamps[-1]
                else:
                    timestamp_last = timestamps[-1] + 1
                logits[k, ts_begin:timestamp_last] = -np.inf

        if tokens.shape[1] == self.sample_begin:
            # the first sampled token is a timestamp, no later than max_initial_timestamp
            logits[:, :ts_begin] = -np.inf
            if self.max_initial_timestamp_index is not None:
                last_allowed = ts_begin + self.max_initial_timestamp_index
                logits[:, last_allowed + 1 :] = -np.inf

    def suppress_at_every_step(self, logits):
        logits[:, self.tokenizer.no_timestamps] = -np.inf  # the rest: `graph.layers.timestamp_rules`

    def apply(self, logits, tokens):
        self.suppress(logits, tokens)
        ts_begin = self.tokenizer.timestamp_begin
        # if the timestamps together are more probable than any text token, sample a timestamp
        # (log_softmax is monotonic: the best text token's log probability is that of its logit)
        shifted, log_sum = _shift_and_log_sum(logits)
        unchanged = True
        for k in range(tokens.shape[0]):
            timestamp_logprob = logsumexp(shifted[k, ts_begin:] - log_sum[k])
            max_text_token_logprob = shifted[k, :ts_begin].max() - log_sum[k, 0]
            if timestamp_logprob > max_text_token_logprob:
                logits[k, :ts_begin] = -np.inf
                unchanged = False
        return (shifted, log_sum) if unchanged else None


# --- one decoding ----------------------------------------------------------------------------


class DecodingTask:
    """Decodes a batch of windows once, at one temperature: `run(audio_features)`."""

    def __init__(self, model: WhisperModel, options: WindowOptions, rng: np.random.Generator | None = None):
        self.model = model
        self.options = _verify_options(options)
        self.tokenizer = tokenizer_for(
            model.is_multilingual,
            num_languages=model.num_languages,
            language=options.language or "en",
            task=options.task,
        )
        tokenizer = self.tokenizer

        self.n_group: int = options.beam_size or options.best_of or 1
        self.n_ctx: int = model.dims.n_text_ctx
        self.sample_len: int = options.sample_len or model.dims.n_text_ctx // 2

        self.sot_sequence = tokenizer.sot_sequence
        if options.without_timestamps:
            self.sot_sequence = tokenizer.sot_sequence_including_notimestamps
        self.initial_tokens: tuple[int, ...] = self._initial_tokens()
        self.sample_begin: int = len(self.initial_tokens)
        self.sot_index: int = self.initial_tokens.index(tokenizer.sot)

        self.inference = model.inference()
        self.sequence_ranker = MaximumLikelihoodRanker(options.length_penalty)
        if options.beam_size is not None:
            self.decoder: TokenDecoder = BeamSearchDecoder(
                options.beam_size, tokenizer.eot, self.inference, options.patience
            )
        else:
            self.decoder = GreedyDecoder(options.temperature, tokenizer.eot, rng or np.random.default_rng(0))

        self.logit_filters: list[LogitFilter] = []
        if options.suppress_blank:
            self.logit_filters.append(SuppressBlank(tokenizer, self.sample_begin))
        if options.suppress_tokens:
            self.logit_filters.append(SuppressTokens(self._suppress_tokens()))
        if not options.without_timestamps:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx  # 0.02 s per timestamp step
            max_initial_timestamp_index = None
            if options.max_initial_timestamp:
                max_initial_timestamp_index = round(options.max_initial_timestamp / precision)
            self.logit_filters.append(ApplyTimestampRules(tokenizer, self.sample_begin, max_initial_timestamp_index))

    def _initial_tokens(self) -> tuple[int, ...]:
        """[<|startofprev|> prompt] sot_sequence [prefix]"""
        tokens = list(self.sot_sequence)
        if prefix := self.options.prefix:
            prefix_tokens = self.tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else list(prefix)
            max_prefix_len = self.n_ctx // 2 - self.sample_len
            tokens = tokens + prefix_tokens[-max_prefix_len:]
        if prompt := self.options.prompt:
            prompt_tokens = self.tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
            tokens = [self.tokenizer.sot_prev] + prompt_tokens[-(self.n_ctx // 2 - 1) :] + tokens
        return tuple(tokens)

    def _suppress_tokens(self) -> tuple[int, ...]:
        suppress_tokens = self.options.suppress_tokens
        if isinstance(suppress_tokens, str):
            suppress_tokens = [int(t) for t in suppress_tokens.split(",")]
        suppress_tokens = list(suppress_tokens)
        if -1 in suppress_tokens:
            suppress_tokens = [t for t in suppress_tokens if t >= 0]
            suppress_tokens.extend(self.tokenizer.non_speech_tokens)
        t = self.tokenizer
        # the task and context tokens never appear in the text; no-speech is read separately
        suppress_tokens.extend([t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech])
        return tuple(sorted(set(suppress_tokens)))

    def _main_loop(self, audio_features: Any, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
        n_batch = tokens.shape[0]
        sum_logprobs = np.zeros(n_batch, dtype=np.float32)
        no_speech_probs = [np.nan] * n_batch
        choose = getattr(self.inference, "logits_and_choice", None)
        if not (isinstance(self.decoder, GreedyDecoder) and self.decoder.temperature == 0):
            choose = None
        # where the "timestamps more probable than text" rule starts; n_vocab without timestamps
        timestamp_begin = self.model.dims.n_vocab if self.options.without_timestamps else self.tokenizer.timestamp_begin
        steps_per_call = getattr(self.inference, "steps_per_call", 1) if choose else 1
        every_step = self._every_step_suppression(n_batch) if steps_per_call > 1 else None  # the same all along
        queued: list[tuple[np.ndarray, np.ndarray]] = []  # a run's tokens and log probabilities, step by step
        try:
            first = 0
            if self._checks_draft(tokens):
                tokens, completed, no_speech_logits = self._check_draft(audio_features, tokens, sum_logprobs)
                no_speech_probs = softmax(no_speech_logits)[:, self.tokenizer.no_speech].tolist()
                first = self.sample_len if completed else tokens.shape[1] - self.sample_begin
            for i in range(first, self.sample_len):
                if not queued and i > 0 and self._run_fits(i, tokens, steps_per_call):
                    chosen, logprobs = self.inference.greedy_run(
                        tokens, audio_features, self._run_rules(tokens, timestamp_begin, every_step)
                    )
                    queued = list(zip(chosen.T, logprobs.T))
                if queued:
                    next_tokens, logprobs = queued.pop(0)
                    tokens, completed = self.decoder.append(tokens, next_tokens.copy(), logprobs, sum_logprobs)
                    if completed or tokens.shape[-1] > self.n_ctx:
                        break
                    continue
                # the no-speech probability comes from the logits after sot, in the first call
                positions = (self.sot_index, -1) if i == 0 else (-1,)
                if choose:
                    # the rows that have ended sit the step out: their next token is the end again
                    live = np.flatnonzero(tokens[:, -1] != self.tokenizer.eot)
                    if i == 0 or len(live) == n_batch:
                        logits, next_tokens, logprobs = choose(
                            tokens,
                            audio_features,
                            positions,
                            self._suppression(tokens),
                            timestamp_begin,
                            logits_wanted=i == 0,
                        )
                    else:
                        logits, chosen, chosen_logprobs = choose(
                            tokens,
                            audio_features,
                            positions,
                            self._suppression(tokens[live]),
                            timestamp_begin,
                            live,
                            logits_wanted=False,
                        )
                        next_tokens = np.full(n_batch, self.tokenizer.eot, np.int64)
                        logprobs = np.zeros(n_batch, np.float32)
                        next_tokens[live], logprobs[live] = chosen, chosen_logprobs
                else:
                    logits = self.inference.logits(tokens, audio_features, positions)
                if i == 0:
                    no_speech_probs = softmax(logits[:, 0])[:, self.tokenizer.no_speech].tolist()

                if choose:
                    tokens, completed = self.decoder.append(tokens, next_tokens, logprobs, sum_logprobs)
                else:
                    tokens, completed = self._choose_on_host(logits[:, -1], tokens, sum_logprobs)
                if completed or tokens.shape[-1] > self.n_ctx:
                    break
        finally:
            self.inference.cleanup_caching()
        return tokens, sum_logprobs, no_speech_probs

    def _choose_on_host(
        self, logits: np.ndarray, tokens: np.ndarray, sum_logprobs: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """One step's choice on the host: the logits after the last token [n_batch, n_vocab] filtered,
        then the decoder's update (the tokens with the choice appended, whether all are complete)."""
        logits = np.array(logits, dtype=np.float32)  # a writable copy for the filters
        parts = None  # only the last filter's: a later filter may change the logits after an earlier one's
        for logit_filter in self.logit_filters:
            parts = logit_filter.apply(logits, tokens)
        return self.decoder.update(tokens, logits, sum_logprobs, parts)

    def _checks_draft(self, tokens: np.ndarray) -> bool:
        return (
            bool(self.options.draft)
            and tokens.shape[0] == 1
            and hasattr(self.inference, "rewind")
            and isinstance(self.decoder, GreedyDecoder)
            and self.decoder.temperature == 0
        )

    def _check_draft(
        self, audio_features: Any, tokens: np.ndarray, sum_logprobs: np.ndarray
    ) -> tuple[np.ndarray, bool, np.ndarray]:
        """Greedy decoding's first steps in one forward pass over the initial tokens and the draft:
        the logits after each of the draft's prefixes, filtered and chosen from as a step would,
        each choice checked against the draft's next token. Returns the tokens up to the first
        choice that differs from the draft (or the choice after all of it) included, whether that
        completes the decoding, and the logits after sot (the no-speech probability's). The KV cache
        is rewound to the tokens before the last choice, which the next step runs."""
        n = tokens.shape[1]
        room = min(self.sample_len - 1, self.n_ctx - n - 1)
        draft = np.array(self.options.draft[:room], np.int64)[None]
        positions = (self.sot_index, *range(n - 1, n + draft.shape[1]))
        logits = self.inference.logits(np.concatenate([tokens, draft], axis=1), audio_features, positions)
        completed = False
        for i in range(draft.shape[1] + 1):
            tokens, completed = self._choose_on_host(logits[:, 1 + i], tokens, sum_logprobs)
            if completed or i == draft.shape[1] or tokens[0, -1] != draft[0, i]:
                break
        self.inference.rewind(tokens.shape[1] - 1)
        return tokens, completed, logits[:, 0]

    def _run_fits(self, i: int, tokens: np.ndarray, steps: int) -> bool:
        """Whether a run of `steps` greedy steps fits before sample_len and the end of the KV cache
        (the last token is not in it yet); single steps take the rest."""
        return steps > 1 and i + steps <= self.sample_len and tokens.shape[1] - 1 + steps <= self.n_ctx

    def _every_step_suppression(self, n_batch: int) -> np.ndarray:
        """What the logit filters suppress at every step after the first: float32 [n_batch, n_vocab]."""
        suppress = np.zeros((n_batch, self.model.dims.n_vocab), np.float32)
        for logit_filter in self.logit_filters:
            logit_filter.suppress_at_every_step(suppress)
        return suppress

    def _run_rules(self, tokens: np.ndarray, timestamp_begin: int, suppress: np.ndarray) -> RunRules:
        """What a run of greedy steps after `tokens` needs (`RunningInference.greedy_run`); suppress:
        `_every_step_suppression`'s."""
        sampled = tokens[:, self.sample_begin :]
        previous = sampled[:, -2] if sampled.shape[1] >= 2 else np.full(len(tokens), timestamp_begin)
        last_timestamp = np.full(len(tokens), -1, np.int64)
        for row, seq in enumerate(sampled):
            stamps = seq[seq >= timestamp_begin]
            if stamps.size:
                last_timestamp[row] = stamps[-1]
        return RunRules(suppress, timestamp_begin, self.tokenizer.eot, previous.astype(np.int64), last_timestamp)

    def _suppression(self, tokens: np.ndarray) -> np.ndarray:
        """What the logit filters suppress before the next token: float32 [n_batch, n_vocab], 0 or -inf."""
        mask = np.zeros((tokens.shape[0], self.model.dims.n_vocab), np.float32)
        for logit_filter in self.logit_filters:
            logit_filter.suppress(mask, tokens)
        return mask

    def run(self, audio_features: Any, n_audio: int = 1) -> list[DecodingResult]:
        """Decode the windows whose features `WhisperModel.encode` returned; one result each.

        With `options.language` None the language is detected from the same features and its
        token written into the sequence."""
        self.decoder.reset()
        tokenizer = self.tokenizer
        tokens = np.tile(np.array(self.initial_tokens, dtype=np.int64), (n_audio, 1))

        language_probs = None
        languages = [self.options.language] * n_audio
        if self.options.language is None:
            language_tokens, language_probs = detect_language(self.model, audio_features, n_audio, tokenizer)
            languages = [max(probs, key=probs.get) for probs in language_probs]
            tokens[:, self.sot_index + 1] = language_tokens

        # the group of each audio (beams or samples), contiguous
        tokens = np.repeat(tokens, self.n_group, axis=0)
        tokens, sum_logprobs, no_speech_probs = self._main_loop(audio_features, tokens)

        no_speech_probs = no_speech_probs[:: self.n_group]
        tokens = tokens.reshape(n_audio, self.n_group, -1)
        sum_logprobs = sum_logprobs.reshape(n_audio, self.n_group)

        # the candidates of each audio, from the first sampled token to before the first eot
        candidates, candidate_logprobs = self.decoder.finalize(tokens, sum_logprobs)
        candidates = [[t[self.sample_begin : t.index(tokenizer.eot)] for t in group] for group in candidates]

        selected = self.sequence_ranker.rank(candidates, candidate_logprobs)
        results = []
        for i in range(n_audio):
            chosen = candidates[i][selected[i]]
            text = tokenizer.decode(chosen).strip()
            results.append(
                DecodingResult(
                    language=languages[i],
                    language_probs=language_probs[i] if language_probs else None,
                    tokens=chosen,
                    text=text,
                    avg_logprob=candidate_logprobs[i][selected[i]] / (len(chosen) + 1),
                    no_speech_prob=no_speech_probs[i],
                    temperature=self.options.temperature,
                    compression_ratio=compression_ratio(text),
                )
            )
        return results


def _verify_options(options: WindowOptions) -> WindowOptions:
    if options.beam_size is not None and options.best_of is not None:
        raise MaxWhisperError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise MaxWhisperError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise MaxWhisperError("patience requires beam_size to be given")
    if options.length_penalty is not None and not (0 <= options.length_penalty <= 1):
        raise MaxWhisperError("length_penalty (alpha) should be a value between 0 and 1")
    return options


def decode(
    model: WhisperModel,
    mel: np.ndarray,
    options: WindowOptions = WindowOptions(),
    rng: np.random.Generator | None = None,
    **changes,
) -> DecodingResult | list[DecodingResult]:
    """Encode and decode 30 s windows: mel [n_mels, 3000] -> one result, [n, n_mels, 3000] -> n."""
    single = mel.ndim == 2
    if single:
        mel = mel[None]
    if changes:
        options = replace(options, **changes)
    results = DecodingTask(model, options, rng).run(model.encode(mel), n_audio=mel.shape[0])
    return results[0] if single else results
