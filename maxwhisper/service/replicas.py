"""Which model replicas are up, as the ingress sees them: Serve's count of running replicas (asking
its controller costs a round trip, so at most once a second), bounded by the replica actors alive in
Ray's actor table (a local call of about a millisecond). The controller learns of a dead replica
only seconds later; the actor table says so at once.

Read while the service is used, and not while it idles: each look at the replicas (a request's
readiness check, the app's status) keeps them read four times a second for ACTIVE_S after it, so a
death shows within a quarter of a second; an idle service reads nothing. `fresh` reads now where
the watch has idled (/health: never an answer from before an idle spell).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("maxwhisper.service")

STATUS_EVERY_S = 1.0
ACTORS_EVERY_S = 0.25
ACTIVE_S = 10.0  # after the last look at the replicas, they are read this long, then not until the next
FRESH_WAIT_S = 5.0  # the longest `fresh` waits for a read (the controller may be busy)
REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve names a replica's actor SERVE_REPLICA::app#deployment#id


@dataclass(frozen=True)
class Replicas:
    up: int  # running and alive
    target: int
    down_s: float  # how long the deployment has had none up (0 while it has)


class ReplicaWatch:
    """The model deployments' replicas (`names`: deployment names), read from a thread while looked at."""

    def __init__(self, app: str, names: list[str], target: int):
        self.app, self.names, self.target = app, names, target
        self._running: dict[str, int] = {}
        self._alive: dict[str, int] = {}
        self._down_since = dict.fromkeys(names, time.monotonic())
        self._looked = time.monotonic()  # the last look at the replicas
        self._read_started = -ACTORS_EVERY_S  # when the last read began, and when the last one done had
        self._read_done = -ACTORS_EVERY_S
        self._status_read = -STATUS_EVERY_S
        self._wake = threading.Event()
        self._done = threading.Condition()
        threading.Thread(target=self._watch, name="replicas", daemon=True).start()

    def of(self, name: str) -> Replicas:
        """The deployment's replicas as last read; the watch goes on (or wakes) for ACTIVE_S."""
        self._looked = time.monotonic()
        if self._looked - self._read_started > ACTORS_EVERY_S:
            self._wake.set()
        up = min(self._running.get(name, 0), self._alive.get(name, 0))
        since = self._down_since.get(name)
        return Replicas(up, self.target, 0.0 if since is None else time.monotonic() - since)

    def refresh(self) -> None:
        """Read the actor table now (a request saw a replica die)."""
        self._wake.set()

    def fresh(self) -> None:
        """Return at once while the replicas are being read (a read has begun within ACTIVE_S); after an
        idle spell, once a read begun now has ended: blocks, at most FRESH_WAIT_S."""
        asked = time.monotonic()
        if asked - self._read_started < ACTIVE_S:
            return
        self._looked = asked
        with self._done:
            self._wake.set()
            self._done.wait_for(lambda: self._read_done >= asked, FRESH_WAIT_S)

    def _watch(self) -> None:
        while True:
            self._wake.wait(ACTORS_EVERY_S if time.monotonic() - self._looked < ACTIVE_S else None)
            self._wake.clear()
            started = time.monotonic()
            self._read_started = started
            try:
                self._read(started)
            except Exception:  # noqa: BLE001 - the controller may be busy or restarting: ask again
                log.debug("could not read the replicas' state", exc_info=True)
            with self._done:
                self._read_done = started
                self._done.notify_all()

    def _read(self, now: float) -> None:
        from ray import serve
        from ray.util import list_named_actors

        if now - self._status_read >= STATUS_EVERY_S:
            self._status_read = now
            application = serve.status().applications.get(self.app)
            deployments = application.deployments if application else {}
            self._running = {n: deployments[n].replica_states.get("RUNNING", 0) for n in self.names if n in deployments}
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
        for name in self.names:
            if min(self._running.get(name, 0), alive[name]) > 0:
                self._down_since[name] = None
            elif self._down_since.get(name) is None:
                self._down_since[name] = now
