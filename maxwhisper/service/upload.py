"""A request's multipart form, read as it streams in and refused at the first limit it passes.

The body's bytes are counted as they arrive, whether the client declared a Content-Length or sent
it chunked; past the limit the request is answered 413 and nothing more is read into memory. The
audio stays in memory (it is at most the upload limit) and nothing is written to disk. Each other
limit (fields, a field's size, a part's headers) and each malformed body is its own OpenAI error
naming what was wrong. Uploads held at once share one budget (`UploadBudget`): past it a request
is answered 503 with Retry-After. No HTTP server here: an async iterator of the body's chunks in,
a `Form` out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from .openai_api import ApiError

FORM_ALLOWANCE = 64 * 2**10  # the body's bytes besides the file's: the other fields, part headers, boundaries
BUSY_RETRY_S = 2  # Retry-After when the uploads held at once fill their budget


@dataclass(frozen=True)
class FormLimits:
    file_bytes: int  # the audio file
    fields: int = 32  # parts, the file's included
    field_bytes: int = 16 * 2**10  # each part other than the file: a prompt of Whisper's 224 tokens is ~1 KB

    @property
    def body_bytes(self) -> int:
        return self.file_bytes + FORM_ALLOWANCE


@dataclass
class Form:
    """The form's text fields (each name's values in order) and the `file` part's bytes (None: none)."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    file: bytes | None = None


class UploadBudget:
    """The bytes of uploads held in memory at once, across requests: each takes its declared
    Content-Length as it begins, or, sent chunked, its bytes as they arrive, and gives them back when
    its upload is dropped. Past `total_bytes` a request is refused (503, Retry-After). Used from the
    HTTP server's event loop alone."""

    def __init__(self, total_bytes: int):
        self.total_bytes, self.held = total_bytes, 0

    @contextlib.contextmanager
    def claim(self) -> Iterator[Callable[[int], None]]:
        """A request's share: `take(n)` holds n bytes more, or raises ApiError; all are given back at the end."""
        taken = 0

        def take(n: int) -> None:
            nonlocal taken
            if self.held + n > self.total_bytes:
                raise ApiError(
                    503,
                    f"the service holds its most uploads at once ({self.total_bytes / 2**20:g} MB): "
                    f"try again in a few seconds",
                    type="server_error",
                    code="uploads_full",
                    retry_after=BUSY_RETRY_S,
                )
            self.held += n
            taken += n

        try:
            yield take
        finally:
            self.held -= taken


def too_large(limits: FormLimits) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than this service's {limits.file_bytes / 2**20:g} MB",
        param="file",
        code="upload_too_large",
    )


def boundary_of(content_type: str) -> bytes:
    """The boundary a multipart/form-data Content-Type gives, or ApiError."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise ApiError(
            400,
            "send the request as multipart/form-data with the audio in the 'file' field",
            param="file",
            code="invalid_content_type",
        )
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 70:  # RFC 2046
        raise ApiError(
            400,
            "the Content-Type multipart/form-data gives no boundary (1 to 70 characters)",
            code="invalid_content_type",
        )
    return boundary


async def read_form(
    body: AsyncIterator[bytes],
    content_type: str,
    content_length: str | None,
    limits: FormLimits,
    take: Callable[[int], None] = lambda n: None,
) -> Form:
    """The form in `body` (the request's chunks as they arrive), or ApiError at the first limit
    passed or the first malformed byte; a declared Content-Length past the limit is refused before
    any byte is read. `take(n)` holds n bytes of the uploads' budget (`UploadBudget.claim`): the
    declared length at once, else each chunk as it arrives."""
    parts = _Parts(limits)
    parser = MultipartParser(boundary_of(content_type), parts.callbacks())
    declared = content_length is not None and content_length.isdigit()
    if declared and int(content_length) > limits.body_bytes:
        raise too_large(limits)
    if declared:
        take(int(content_length))
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > limits.body_bytes:
            raise too_large(limits)
        if not declared:
            take(len(chunk))
        try:
            parser.write(chunk)
        except MultipartParseError as e:
            raise parts.malformed(e) from None
    if not parts.ended:
        raise ApiError(
            400,
            "the multipart body ends before its closing boundary: was the upload cut short?",
            code="invalid_multipart",
        )
    return parts.form


class _Parts:
    """The parser's callbacks: each part's headers and bytes, checked against the limits as they come."""

    def __init__(self, limits: FormLimits):
        self.limits, self.form, self.ended, self.count = limits, Form(), False, 0
        self.headers: dict[bytes, bytes] = {}
        self.header_name, self.header_value, self.value = bytearray(), bytearray(), bytearray()
        self.name = ""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field_data,
            "on_header_value": self.header_value_data,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.count += 1
        if self.count > self.limits.fields:
            raise ApiError(400, f"the form has more than {self.limits.fields} fields", code="too_many_fields")
        self.headers, self.value, self.name = {}, bytearray(), ""

    def header_field_data(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        self.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name, self.header_value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        disposition, options = parse_options_header(self.headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise ApiError(
                400, "a part of the form has no Content-Disposition: form-data with a name", code="invalid_multipart"
            )
        self.name = name.decode("utf-8", "replace")
        if self.name == "file" and self.form.file is not None:
            raise ApiError(400, "'file' was given twice: send one audio file", param="file", code="too_many_files")
        if self.name != "file" and b"filename" in options:
            raise ApiError(
                400, f"'{self.name}' is a file: only 'file' takes one", param=self.name, code="too_many_files"
            )

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.name == "file":
            if len(self.value) + end - start > self.limits.file_bytes:
                raise too_large(self.limits)
        elif len(self.value) + end - start > self.limits.field_bytes:
            raise ApiError(
                400,
                f"the field '{self.name}' is longer than this service's {self.limits.field_bytes // 2**10} KB",
                param=self.name,
                code="field_too_large",
            )
        self.value += data[start:end]

    def part_end(self) -> None:
        if self.name == "file":
            self.form.file = bytes(self.value)
        else:
            try:
                text = self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(
                    400, f"the field '{self.name}' is not UTF-8 text", param=self.name, code="invalid_value"
                ) from None
            self.form.fields.setdefault(self.name, []).append(text)
        self.value = bytearray()

    def end(self) -> None:
        self.ended = True

    def malformed(self, e: MultipartParseError) -> ApiError:
        if self.count == 0:
            return ApiError(
                400,
                "the body does not begin with the boundary that its Content-Type header gives",
                code="invalid_multipart",
            )
        if "header" in str(e).lower():
            return ApiError(
                400, "a part of the form has too many or too long headers (8 of 4 KB at most)", code="invalid_multipart"
            )
        return ApiError(400, f"the multipart body is malformed in its part {self.count}", code="invalid_multipart")
