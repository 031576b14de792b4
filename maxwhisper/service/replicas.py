"""Which model replicas are up, as the ingress sees them: Serve's count of running replicas (asking
its controller costs a round trip, so at most once a second), bounded by the replica actors alive in
Ray's actor table (a local call of about a millisecond). The controller learns of a dead replica
seconds later; the actor table sooner. Each is read on a thread of its own, so a controller slow to
answer, as under load, does not hold back the actor table's reads.

Read while the service is used, and not while it idles: each look at the replicas (a request's
readiness check, the app's status) keeps them read for ACTIVE_S after it, the actor table four times
a second; an idle service reads nothing. `fresh` reads now where the watch has idled (/health: never
an answer from before an idle spell).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("maxwhisper.service")

STATUS_EVERY_S = 1.0
ACTORS_EVERY_S = 0.25
ACTIVE_S = 10.0  # after the last look at the replicas, they are read this long, then not until the next
FRESH_WAIT_S = 5.0  # the longest `fresh` waits for its reads (the controller may be busy)
REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve names a replica's actor SERVE_REPLICA::app#deployment#id


@dataclass(frozen=True)
class Replicas:
    up: int  # running and alive
    target: int
    down_s: float  # how long the deployment has had none up (0 while it has)


class _Poll:
    """One read of Ray's state, repeated every `every_s` on its own thread while `active()`, else on a
    wake only."""

    def __init__(self, name: str, every_s: float, read: Callable[[], None], active: Callable[[], bool]):
        self.every_s, self._read, self._active = every_s, read, active
        self.started = self.done = -every_s  # when the last read began, and when the last one done had
        self._wake = threading.Event()
        self._finished = threading.Condition()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def wake(self) -> None:
        self._wake.set()

    def wait_read_since(self, asked: float, timeout_s: float) -> None:
        """Block until a read begun at or after `asked` has ended, at most `timeout_s`."""
        with self._finished:
            self._wake.set()
            self._finished.wait_for(lambda: self.done >= asked, timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.every_s if self._active() else None)
            self._wake.clear()
            started = self.started = time.monotonic()
            try:
                self._read()
            except Exception:  # noqa: BLE001 - the controller may be busy or restarting: ask again
                log.debug("could not read the replicas' state", exc_info=True)
            with self._finished:
                self.done = started
                self._finished.notify_all()


class ReplicaWatch:
    """The model deployments' replicas (`names`: deployment names), read from two threads while looked at."""

    def __init__(self, app: str, names: list[str], target: int):
        self.app, self.names, self.target = app, names, target
        self._running: dict[str, int] = {}
        self._alive: dict[str, int] = {}
        self._down_since = dict.fromkeys(names, time.monotonic())
        self._counted = threading.Lock()
        self._looked = time.monotonic()  # the last look at the replicas
        active = lambda: time.monotonic() - self._looked < ACTIVE_S  # noqa: E731
        self._actors = _Poll("replica-actors", ACTORS_EVERY_S, self._read_actors, active)
        self._status = _Poll("replica-status", STATUS_EVERY_S, self._read_status, active)

    def of(self, name: str) -> Replicas:
        """The deployment's replicas as last read; the watch goes on (or wakes) for ACTIVE_S."""
        self._looked = time.monotonic()
        for poll in (self._actors, self._status):
            if self._looked - poll.started > poll.every_s:
                poll.wake()
        up = min(self._running.get(name, 0), self._alive.get(name, 0))
        since = self._down_since.get(name)
        return Replicas(up, self.target, 0.0 if since is None else time.monotonic() - since)

    def refresh(self) -> None:
        """Read the actor table now (a request saw a replica die)."""
        self._actors.wake()

    def fresh(self) -> None:
        """Return at once while the replicas are being read (a read has begun within ACTIVE_S); after an
        idle spell, once reads of both begun now have ended: blocks, at most FRESH_WAIT_S."""
        asked = time.monotonic()
        if asked - self._actors.started < ACTIVE_S:
            return
        self._looked = asked
        self._status.wake()
        self._actors.wait_read_since(asked, FRESH_WAIT_S)
        self._status.wait_read_since(asked, max(0.0, asked + FRESH_WAIT_S - time.monotonic()))

    def _read_status(self) -> None:
        from ray import serve

        application = serve.status().applications.get(self.app)
        deployments = application.deployments if application else {}
        self._running = {n: deployments[n].replica_states.get("RUNNING", 0) for n in self.names if n in deployments}
        self._count()

    def _read_actors(self) -> None:
        from ray.util import list_named_actors

        alive = dict.fromkeys(self.names, 0)
        for actor in list_named_actors(all_namespaces=True):
            parts = actor["name"].removeprefix(REPLICA_PREFIX).split("#")
            if (
                actor["name"].startswith(REPLICA_PREFIX)
                and len(parts) == 3
                and parts[0] == self.app
                and parts[1] in alive
            ):
                alive[parts[1]] += 1
        self._alive = alive
        self._count()

    def _count(self) -> None:
        now = time.monotonic()
        with self._counted:
            for name in self.names:
                if min(self._running.get(name, 0), self._alive.get(name, 0)) > 0:
                    self._down_since[name] = None
                elif self._down_since.get(name) is None:
                    self._down_since[name] = now
