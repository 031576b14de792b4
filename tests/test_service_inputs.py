"""What the transcription service checks before it spends work, without Ray: audio bounded by
its container and by decoding (`audio.load_audio(max_seconds=)`), multichannel and non-finite
audio, the streamed multipart form and its limits, the access policy (API keys, Host, Origin) on
HTTP and WebSocket routes behind the ingress's HTTP server, OpenAI's form fields."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from maxwhisper.api import AudioError, AudioTooLong
from maxwhisper.audio import load_audio


def wav_header(rate: int, samples: int, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """A 16-bit PCM WAV header declaring `samples` frames at `rate` (`data_bytes`: the data
    chunk's size as declared, where it should lie)."""
    block = 2 * channels
    size = samples * block if data_bytes is None else data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", (36 + size) & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data"
        + struct.pack("<I", size)
    )


def wav_bomb() -> bytes:
    """32 KB declaring 16000 samples at 1 Hz: 16,000 s, 256 million samples once resampled to 16 kHz."""
    return wav_header(1, 16000) + bytes(32000)


def flac_hours(hours: float, declared_samples: int | None = None) -> bytes:
    """Silence at 16 kHz, FLAC (~180 KB an hour); `declared_samples`: the sample count STREAMINFO
    gives instead of the true one (0: "unknown"), so that only decoding can tell the length."""
    out = io.BytesIO()
    with sf.SoundFile(out, "w", 16000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(hours * 60)):
            f.write(np.zeros(60 * 16000, np.int16))
    data = bytearray(out.getvalue())
    if declared_samples is not None:  # "fLaC", a block header, STREAMINFO: the count is its bytes 13-17's low 36 bits
        data[8 + 13] = (data[8 + 13] & 0xF0) | (declared_samples >> 32)
        data[8 + 14 : 8 + 18] = (declared_samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def test_a_long_file_is_refused_from_its_container_before_decoding():
    with pytest.raises(AudioTooLong, match="16000.0 s long, more than the 600 s limit") as error:
        load_audio(wav_bomb(), max_seconds=600)
    assert (error.value.seconds, error.value.limit) == (16000.0, 600)
    with pytest.raises(AudioTooLong, match="10800.0 s long"):
        load_audio(flac_hours(3), max_seconds=600)


def test_decoding_stops_at_the_limit_where_the_container_says_less_or_nothing():
    """3 hours of FLAC whose header says 1 s, or gives no length: decoding stops at the limit,
    before the rest is decoded or resampled."""
    for declared in (16000, 0):
        with pytest.raises(AudioTooLong, match="longer than the 600 s limit .decoding stopped there.") as error:
            load_audio(flac_hours(3, declared_samples=declared), max_seconds=600)
        assert error.value.seconds is None
    assert len(load_audio(flac_hours(1 / 60, declared_samples=0), max_seconds=600)) == 60 * 16000  # within: whole


def test_audio_of_many_channels_is_averaged_where_ffmpeg_knows_no_layout_for_them():
    """32 or 9 channels (no FFmpeg layout): their mean; stereo as `ffmpeg -ac 1` mixes it (openai-whisper's)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16000, 32)) * 0.1).astype(np.float32)
    for channels, subtype in [(32, "PCM_16"), (9, "FLOAT")]:
        out = io.BytesIO()
        sf.write(out, x[:, :channels], 16000, format="WAV", subtype=subtype)
        audio = load_audio(out.getvalue())
        assert audio.shape == (16000,) and np.abs(audio - x[:, :channels].mean(axis=1)).max() < 1e-4
    out = io.BytesIO()
    sf.write(out, x[:, :2], 16000, format="WAV", subtype="PCM_16")
    assert np.abs(load_audio(out.getvalue()) - x[:, :2].mean(axis=1)).max() < 1e-4


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_in_a_file_are_refused(subtype):
    for bad in (np.nan, np.inf):
        samples = np.full(16000, 0.1, np.float32)
        samples[1000] = bad
        out = io.BytesIO()
        sf.write(out, samples, 16000, format="WAV", subtype=subtype)
        with pytest.raises(AudioError, match="NaN or infinite samples"):
            load_audio(out.getvalue())


# --- the streamed form -----------------------------------------------------------------------


def _encoded(files=None, data=None, content=None, headers=None) -> tuple[str, bytes]:
    """(Content-Type, body) as httpx sends them."""
    import httpx

    request = httpx.Request(
        "POST", "http://service/v1/audio/transcriptions", files=files, data=data, content=content, headers=headers
    )
    return request.headers["content-type"], request.read()


def _read(
    content_type: str, body: bytes, chunk: int = 7, limits=None, length: str | None = None, taken: list | None = None
):
    """read_form over `body` cut into `chunk`-byte pieces, as a server hands them on; `taken`
    gets how many bytes it took from the body."""
    import asyncio

    from maxwhisper.service.upload import FormLimits, read_form

    taken = [] if taken is None else taken

    async def pieces():
        for i in range(0, len(body), chunk):
            taken.append(len(body[i : i + chunk]))
            yield body[i : i + chunk]

    return asyncio.run(read_form(pieces(), content_type, length, limits or FormLimits(file_bytes=2**20)))


def _refusal(*args, **kwargs):
    from maxwhisper.service.openai_api import ApiError

    with pytest.raises(ApiError) as error:
        _read(*args, **kwargs)
    return error.value


def test_the_form_is_read_as_it_streams_in():
    audio = bytes(range(256)) * 1000
    content_type, body = _encoded(
        files={"file": ("a.wav", audio)}, data={"model": "whisper-1", "timestamp_granularities[]": ["word", "segment"]}
    )
    for chunk in (7, 65536):
        form = _read(content_type, body, chunk)
        assert form.file == audio
        assert form.fields == {"model": ["whisper-1"], "timestamp_granularities[]": ["word", "segment"]}


def test_an_upload_past_the_limit_is_refused_there_declared_or_not():
    """Chunked (no Content-Length): refused once the body passes the limit, the rest never read;
    a declared Content-Length past the limit: refused before a byte is read."""
    from maxwhisper.service.upload import FORM_ALLOWANCE, FormLimits

    limits = FormLimits(file_bytes=2**20)
    content_type, body = _encoded(files={"file": ("big.wav", bytes(8 * 2**20))}, data={"model": "whisper-1"})
    taken = []
    error = _refusal(content_type, body, 65536, limits, taken=taken)
    assert (error.status, error.code, error.param) == (413, "upload_too_large", "file")
    assert error.message == "the upload is larger than this service's 1 MB"
    assert sum(taken) <= 2**20 + FORM_ALLOWANCE + 65536
    taken = []
    error = _refusal(content_type, body, 65536, limits, length=str(len(body)), taken=taken)
    assert (error.status, error.code, sum(taken)) == (413, "upload_too_large", 0)


def test_each_multipart_failure_names_the_limit_or_fault_it_hit():
    audio = ("a.wav", b"RIFF" * 100)
    cases = [  # (what, Content-Type, body, status, code, param, in the message)
        (
            "41 fields",
            *_encoded(files={"file": audio}, data={f"f{i}": "x" for i in range(40)}),
            400,
            "too_many_fields",
            None,
            "more than 32 fields",
        ),
        (
            "a 2 MB prompt",
            *_encoded(files={"file": audio}, data={"prompt": "a" * 2 * 2**20}),
            400,
            "field_too_large",
            "prompt",
            "'prompt' is longer than this service's 16 KB",
        ),
        ("two files", *_encoded(files=[("file", audio), ("file", audio)]), 400, "too_many_files", "file", "twice"),
        (
            "a file elsewhere",
            *_encoded(files={"file": audio, "prompt": audio}),
            400,
            "too_many_files",
            "prompt",
            "only 'file' takes one",
        ),
    ]
    content_type, body = _encoded(files={"file": audio}, data={"model": "whisper-1"})
    boundary = content_type.split("boundary=")[1]
    cases += [
        (
            "not UTF-8",
            content_type,
            body.replace(b"whisper-1", b"\xff\xfe"),
            400,
            "invalid_value",
            "model",
            "not UTF-8",
        ),
        (
            "a wrong boundary",
            content_type.replace(boundary, "not-the-one"),
            body,
            400,
            "invalid_multipart",
            None,
            "does not begin with the boundary",
        ),
        ("no boundary", "multipart/form-data", body, 400, "invalid_content_type", None, "gives no boundary"),
        ("cut short", content_type, body[: len(body) // 2], 400, "invalid_multipart", None, "ends before its closing"),
        ("not multipart", "application/json", b"{}", 400, "invalid_content_type", "file", "multipart/form-data"),
        (
            "a part without a name",
            content_type,
            body.replace(b'name="model"', b'nom="model"'),
            400,
            "invalid_multipart",
            None,
            "no Content-Disposition",
        ),
    ]
    for what, content_type, body, status, code, param, words in cases:
        error = _refusal(content_type, body, 65536)
        assert (what, error.status, error.code, error.param) == (what, status, code, param)
        assert words in error.message, (what, error.message)


# --- who may use it --------------------------------------------------------------------------


def _scope(path="/v1/audio/transcriptions", host="127.0.0.1:8000", method="POST", kind="http", query=b"", **headers):
    pairs = [(b"host", host.encode())] if host is not None else []
    pairs += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": kind, "path": path, "method": method, "headers": pairs, "query_string": query}


def test_api_keys_are_asked_on_the_api_only_and_kept_as_digests():
    from maxwhisper.service.access import AccessPolicy

    policy = AccessPolicy.create("127.0.0.1", keys=["k-one-123", "k-two-456"])
    assert b"k-one-123" not in repr(policy).encode() and len(policy.key_digests) == 2
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic k-one-123"},
        {"authorization": "Bearer "},
    ):
        error = policy.refusal(_scope(**headers))
        assert (error.status, error.code, error.type) == (401, "invalid_api_key", "invalid_request_error")
    assert policy.refusal(_scope(authorization="Bearer k-two-456")) is None
    assert policy.refusal(_scope(authorization="bearer  k-one-123")) is None
    for path in ("/health", "/docs", "/openapi.json", "/", "/gradio_api/info"):
        assert policy.refusal(_scope(path, method="GET")) is None
    # a WebSocket handshake: a browser cannot set headers, so the query parameter too
    assert policy.refusal(_scope("/v1/realtime", kind="websocket", query=b"api_key=k-one-123")) is None
    assert policy.refusal(_scope("/v1/realtime", kind="websocket", query=b"api_key=nope")).status == 401
    assert AccessPolicy.create("127.0.0.1").refusal(_scope()) is None  # no keys: open


def test_the_host_must_be_one_the_service_listens_as():
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    from maxwhisper.service.access import AccessPolicy

    local = AccessPolicy.create("127.0.0.1", allowed_hosts=["box.lan"])
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "box.lan:8000"):
        assert local.refusal(_scope(host=host)) is None, host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", None):
        error = local.refusal(_scope(host=host))
        assert (error.status, error.code) == (403, "host_not_allowed"), host
    assert "evil.example" in local.refusal(_scope(host="evil.example")).message
    assert local.refusal(_scope("/v1/realtime", kind="websocket", host="evil.example")).status == 403
    everywhere = AccessPolicy.create("0.0.0.0")
    assert everywhere.refusal(_scope(host="anything.example")) is None  # every interface: any name unless given
    named = AccessPolicy.create("0.0.0.0", allowed_hosts=["asr.example.com"])
    assert named.refusal(_scope(host="asr.example.com")) is None
    assert named.refusal(_scope(host="10.0.0.5:8000")).code == "host_not_allowed"


def test_a_page_of_another_origin_is_refused_unless_allowed_and_then_gets_cors():
    import asyncio

    from maxwhisper.service.access import AccessPolicy, guard

    policy = AccessPolicy.create("127.0.0.1", cors_origins=["https://app.example/"])
    assert policy.refusal(_scope(origin="http://127.0.0.1:8000")) is None  # the app's own page (same origin)
    error = policy.refusal(_scope(origin="https://evil.example"))
    assert (error.status, error.code) == (403, "origin_not_allowed")
    assert policy.refusal(_scope(origin="null")).code == "origin_not_allowed"
    assert policy.refusal(_scope(origin="https://app.example")) is None

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(scope):
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(guard(app, policy)(scope, None, send))
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    status, headers, _ = call(_scope(origin="https://app.example"))
    assert status == 200 and headers[b"access-control-allow-origin"] == b"https://app.example"
    status, headers, _ = call(
        _scope(
            method="OPTIONS",
            origin="https://app.example",
            access_control_request_method="POST",
            access_control_request_headers="authorization",
        )
    )
    assert status == 204 and headers[b"access-control-allow-headers"] == b"authorization"
    status, headers, body = call(_scope(origin="https://evil.example"))
    assert status == 403 and b"origin_not_allowed" in body and b"access-control-allow-origin" not in headers
    status, headers, _ = call(_scope(origin="http://127.0.0.1:8000"))  # same origin: no CORS headers needed
    assert status == 200 and b"access-control-allow-origin" not in headers


# --- OpenAI's form ---------------------------------------------------------------------------


def test_the_openai_client_s_whole_form_is_accepted_and_checked():
    """stream, chunking_strategy (auto, a JSON object, or the bracketed fields the openai client
    sends) and include[] are taken; wrong values are refused naming the field."""
    from maxwhisper.service.openai_api import ApiError, Served, parse_form

    served = Served((("max", "tiny.en"),))

    def parse(**fields):
        return parse_form(
            {"model": ["whisper-1"], **{k: v if isinstance(v, list) else [v] for k, v in fields.items()}},
            "transcribe",
            served,
        )

    assert parse(stream="true").stream and not parse(stream="false").stream and not parse().stream
    assert parse(**{"chunking_strategy": "auto", "include[]": "logprobs"}).stream is False
    parse(chunking_strategy='{"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300}')
    parse(
        **{
            "chunking_strategy[type]": "server_vad",
            "chunking_strategy[threshold]": "0.5",
            "chunking_strategy[prefix_padding_ms]": "300",
        }
    )
    assert parse(timestamp_granularities=["word"], response_format="verbose_json").granularities == ("word",)
    for fields, param, words in [
        ({"stream": "yes"}, "stream", "true or false"),
        ({"stream": "true", "response_format": "srt"}, "response_format", "json or text"),
        ({"include[]": "tokens"}, "include[]", "logprobs"),
        ({"chunking_strategy": "manual"}, "chunking_strategy", "auto or a server_vad object"),
        ({"chunking_strategy[type]": "client_vad"}, "chunking_strategy", "server_vad"),
        (
            {"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "2"},
            "chunking_strategy",
            "from 0 to 1",
        ),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[volume]": "2"}, "chunking_strategy", "volume"),
    ]:
        with pytest.raises(ApiError, match=words) as error:
            parse(**fields)
        assert (error.value.status, error.value.param) == (400, param), fields


def test_audio_exactly_at_the_limit_is_taken():
    """The decoded length is counted in samples: 60 s of FLAC frames summed as seconds would pass 60."""
    assert len(load_audio(flac_hours(1 / 60, declared_samples=0), max_seconds=60)) == 60 * 16000


def test_the_front_serves_http_and_websockets_behind_the_access_policy():
    """The ingress's HTTP server (`front.Front`, uvicorn in a thread) with the guard: a WebSocket
    route is asked for the key as the API is (here as the query parameter a browser can send),
    its handshake refused with 403 without it or from a page of another origin; a request
    uvicorn cannot parse gets OpenAI's error shape."""
    import json
    import socket
    import time

    import httpx
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from maxwhisper.service.access import AccessPolicy, guard
    from maxwhisper.service.front import Front

    async def echo(ws):
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.close()

    app = Starlette(routes=[WebSocketRoute("/v1/echo", echo)])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    front = Front(guard(app, AccessPolicy.create("127.0.0.1", keys=["k-123456"])), "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 30
        while not front.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(f"ws://127.0.0.1:{port}/v1/echo?api_key=k-123456") as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
        for url, headers in [
            (f"ws://127.0.0.1:{port}/v1/echo", {}),
            (f"ws://127.0.0.1:{port}/v1/echo?api_key=k-123456", {"Origin": "https://evil.example"}),
        ]:
            with pytest.raises(InvalidStatus) as refused:
                connect(url, additional_headers=headers, open_timeout=10)
            assert refused.value.response.status_code == 403
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["error"]["code"] == "invalid_api_key"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1e3\r\n\r\n")
            head, _, body = s.recv(65536).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["error"]["code"] == "invalid_request"
    finally:
        front.server.should_exit = True
