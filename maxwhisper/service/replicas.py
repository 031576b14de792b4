"""Which model replicas are up, as the ingress sees them: Serve's count of running replicas, read
once a second (asking its controller costs a round trip), bounded by the replica actors alive in
Ray's actor table, read four times a second (a local call of about a millisecond). The controller
learns of a dead replica only seconds later; the actor table says so at once, so /health and the
readiness checks follow a death within a quarter of a second.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("maxwhisper.service")

STATUS_EVERY_S = 1.0
ACTORS_EVERY_S = 0.25
REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve names a replica's actor SERVE_REPLICA::app#deployment#id


@dataclass(frozen=True)
class Replicas:
    up: int  # running and alive
    target: int
    down_s: float  # how long the deployment has had none up (0 while it has)


class ReplicaWatch:
    """The model deployments' replicas (`names`: deployment names), watched from a thread."""

    def __init__(self, app: str, names: list[str], target: int):
        self.app, self.names, self.target = app, names, target
        self._running: dict[str, int] = {}
        self._alive: dict[str, int] = {}
        self._down_since = dict.fromkeys(names, time.monotonic())
        self._wake = threading.Event()
        threading.Thread(target=self._watch, name="replicas", daemon=True).start()

    def of(self, name: str) -> Replicas:
        up = min(self._running.get(name, 0), self._alive.get(name, 0))
        since = self._down_since.get(name)
        return Replicas(up, self.target, 0.0 if since is None else time.monotonic() - since)

    def refresh(self) -> None:
        """Read the actor table now (a request saw a replica die)."""
        self._wake.set()

    def _watch(self) -> None:
        from ray import serve
        from ray.util import list_named_actors

        status_read = -STATUS_EVERY_S
        while True:
            try:
                if time.monotonic() - status_read >= STATUS_EVERY_S:
                    status_read = time.monotonic()
                    application = serve.status().applications.get(self.app)
                    deployments = application.deployments if application else {}
                    self._running = {n: deployments[n].replica_states.get("RUNNING", 0) for n in self.names
                                     if n in deployments}
                alive = dict.fromkeys(self.names, 0)
                for actor in list_named_actors(all_namespaces=True):
                    parts = actor["name"].removeprefix(REPLICA_PREFIX).split("#")
                    if actor["name"].startswith(REPLICA_PREFIX) and len(parts) == 3 and parts[0] == self.app \
                            and parts[1] in alive:
                        alive[parts[1]] += 1
                self._alive = alive
                for name in self.names:
                    up = self.of(name).up > 0
                    if up:
                        self._down_since[name] = None
                    elif self._down_since.get(name) is None:
                        self._down_since[name] = time.monotonic()
            except Exception:  # noqa: BLE001 - the controller may be busy or restarting: ask again
                log.debug("could not read the replicas' state", exc_info=True)
            self._wake.wait(ACTORS_EVERY_S)
            self._wake.clear()
