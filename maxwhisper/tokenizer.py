"""Whisper's tokenizer: tiktoken over openai-whisper's vocabulary files.

A port of `whisper.tokenizer` with the same API, special tokens and ids. The vocabulary files
(`gpt2.tiktoken` for English-only models, `multilingual.tiktoken` for the rest) are copies of
openai-whisper's in `assets/` (MIT, `assets/LICENSE-openai-whisper`), so that MAX needs neither
openai-whisper nor torch.
"""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import tiktoken

LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

# language code lookup by name, with a few language aliases
TO_LANGUAGE_CODE = {
    **{language: code for code, language in LANGUAGES.items()},
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}

# languages written without spaces between words: split words at unicode boundaries instead
_NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}

_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def model_languages(multilingual: bool, num_languages: int = 99) -> tuple[str, ...]:
    """The language codes a model decodes: English alone for an English-only one."""
    return tuple(LANGUAGES)[:num_languages] if multilingual else ("en",)


def normalize_language(language: str | None) -> str | None:
    """A language code or name (any case) -> its code; ValueError if unknown, as whisper."""
    if language is None:
        return None
    language = language.lower()
    if language in LANGUAGES:
        return language
    if language in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[language]
    raise ValueError(f"Unsupported language: {language}")


@dataclass
class Tokenizer:
    """A thin wrapper around `tiktoken` giving quick access to Whisper's special tokens."""

    encoding: tiktoken.Encoding
    num_languages: int
    language: str | None = None
    task: str | None = None
    sot_sequence: tuple[int, ...] = ()
    special_tokens: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        # in id order (whisper iterates a set, whose order changes from one process to the next)
        ids = {special: self.encoding.encode_single_token(special) for special in self.encoding.special_tokens_set}
        self.special_tokens.update(sorted(ids.items(), key=lambda item: item[1]))

        sot = self.special_tokens["<|startoftranscript|>"]
        langs = tuple(LANGUAGES)[: self.num_languages]
        sot_sequence = [sot]
        if self.language is not None:
            sot_sequence.append(sot + 1 + langs.index(self.language))
        if self.task is not None:
            sot_sequence.append(self.transcribe if self.task == "transcribe" else self.translate)
        self.sot_sequence = tuple(sot_sequence)

    def encode(self, text: str, **kwargs) -> list[int]:
        return self.encoding.encode(text, **kwargs)

    def decode(self, token_ids: list[int], **kwargs) -> str:
        """Text of the tokens; timestamp tokens are dropped."""
        return self.encoding.decode([t for t in token_ids if t < self.timestamp_begin], **kwargs)

    def decode_with_timestamps(self, token_ids: list[int], **kwargs) -> str:
        """Text with timestamp tokens written out, e.g. "<|1.08|>"."""
        return self.encoding.decode(token_ids, **kwargs)

    @cached_property
    def eot(self) -> int:
        return self.encoding.eot_token

    @cached_property
    def transcribe(self) -> int:
        return self.special_tokens["<|transcribe|>"]

    @cached_property
    def translate(self) -> int:
        return self.special_tokens["<|translate|>"]

    @cached_property
    def sot(self) -> int:
        return self.special_tokens["<|startoftranscript|>"]

    @cached_property
    def sot_lm(self) -> int:
        return self.special_tokens["<|startoflm|>"]

    @cached_property
    def sot_prev(self) -> int:
        return self.special_tokens["<|startofprev|>"]

    @cached_property
    def no_speech(self) -> int:
        return self.special_tokens["<|nospeech|>"]

    @cached_property
    def no_timestamps(self) -> int:
        return self.special_tokens["<|notimestamps|>"]

    @cached_property
    def timestamp_begin(self) -> int:
        return self.special_tokens["<|0.00|>"]

    @cached_property
    def language_token(self) -> int:
        """The token of this tokenizer's `language`."""
        if self.language is None:
            raise ValueError("This tokenizer does not have language token configured")
        return self.to_language_token(self.language)

    def to_language_token(self, language: str) -> int:
        if token := self.special_tokens.get(f"<|{language}|>", None):
            return token
        raise KeyError(f"Language {language} not found in tokenizer.")

    @cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        result = [i for token, i in self.special_tokens.items() if token.strip("<|>") in LANGUAGES]
        return tuple(result)[: self.num_languages]

    @cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(self.decode([t]).strip("<|>") for t in self.all_language_tokens)

    @cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return tuple(self.sot_sequence) + (self.no_timestamps,)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens suppressed by `suppress_tokens="-1"`: speaker tags and non-speech annotations
        (e.g. "♪♪♪", "( SPEAKING FOREIGN LANGUAGE )", "[DAVID] Hey there,"), keeping basic
        punctuation like commas, periods, question and exclamation marks."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # symbols that may be one token or several depending on the vocabulary; when several,
        # suppress the first, which is safe: U+2640..U+267F share their first two UTF-8 bytes
        miscellaneous = set("♩♪♫♬♭♮♯")
        # allow hyphens and single quotes between words, but not at the beginning of a word
        result = {self.encoding.encode(" -")[0], self.encoding.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encoding.encode(symbol), self.encoding.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Words and their tokens (for word timestamps)."""
        if self.language in _NO_SPACE_LANGUAGES:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        decoded_full = self.decode_with_timestamps(tokens)
        replacement_char = "\ufffd"
        words, word_tokens, current_tokens = [], [], []
        unicode_offset = 0
        for token in tokens:
            current_tokens.append(token)
            decoded = self.decode_with_timestamps(current_tokens)
            if (
                replacement_char not in decoded
                or decoded_full[unicode_offset + decoded.index(replacement_char)] == replacement_char
            ):
                words.append(decoded)
                word_tokens.append(current_tokens)
                current_tokens = []
                unicode_offset += len(decoded)
        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        subwords, subword_tokens_list = self.split_tokens_on_unicode(tokens)
        words, word_tokens = [], []
        for subword, subword_tokens in zip(subwords, subword_tokens_list):
            special = subword_tokens[0] >= self.eot
            with_space = subword.startswith(" ")
            punctuation = subword.strip() in string.punctuation
            if special or with_space or punctuation or len(words) == 0:
                words.append(subword)
                word_tokens.append(subword_tokens)
            else:
                words[-1] = words[-1] + subword
                word_tokens[-1].extend(subword_tokens)
        return words, word_tokens


VOCABULARIES = Path(__file__).resolve().parent / "assets"


def vocabulary_path(name: str) -> Path:
    """`gpt2` or `multilingual`: its `.tiktoken` file."""
    return VOCABULARIES / f"{name}.tiktoken"


@lru_cache(maxsize=None)
def get_encoding(name: str = "gpt2", num_languages: int = 99) -> tiktoken.Encoding:
    path = vocabulary_path(name)
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in path.read_text().splitlines() if line)
    }
    n_vocab = len(ranks)
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in list(LANGUAGES)[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]
    special_tokens = {token: n_vocab + i for i, token in enumerate(specials)}
    return tiktoken.Encoding(
        name=path.name,
        explicit_n_vocab=n_vocab + len(specials),
        pat_str=_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=special_tokens,
    )


def get_tokenizer(
    multilingual: bool,
    *,
    num_languages: int = 99,
    language: str | None = None,
    task: str | None = None,  # "transcribe", "translate" or None
) -> Tokenizer:
    """As `whisper.tokenizer.get_tokenizer`: `language` a code or a name, in any case (ValueError if
    unknown). English-only models get the gpt2 vocabulary and no language/task tokens;
    multilingual ones default to English transcription."""
    return tokenizer_for(multilingual, num_languages=num_languages, language=normalize_language(language), task=task)


@lru_cache(maxsize=None)
def tokenizer_for(
    multilingual: bool, *, num_languages: int = 99, language: str | None = None, task: str | None = None
) -> Tokenizer:
    """`get_tokenizer` for a language already normalised to its code (`normalize_language`), as the
    library passes it on once a request's language has been checked."""
    if multilingual:
        encoding_name = "multilingual"
        language = language or "en"
        task = task or "transcribe"
    else:
        encoding_name = "gpt2"
        language = None
        task = None
    encoding = get_encoding(name=encoding_name, num_languages=num_languages)
    return Tokenizer(encoding=encoding, num_languages=num_languages, language=language, task=task)
