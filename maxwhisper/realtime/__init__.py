"""OpenAI's realtime transcription (`/v1/realtime?intent=transcription`) as a library: the events
(`protocol`), server VAD (`vad`) and a session that streams each turn (`session`). The service's
WebSocket (`maxwhisper.service.http`) and the benchmark's clients (`maxwhisper.bench.realtime`) use it."""

from .protocol import EventError, ServerVad, SessionConfig
from .session import Limits, RealtimeSession, run_session

__all__ = ["EventError", "Limits", "RealtimeSession", "ServerVad", "SessionConfig", "run_session"]
