"""A container's name and aliases, from dockerd's API, for libnet's DNS across hosts.

Docker does not pass a container's name to a network plugin.  At
``CreateEndpoint`` during ``docker run``/``docker start`` the container is known
to dockerd's API (state ``created``/``exited``, the network in its settings, no
endpoint yet): when exactly one such container is on the network, its name and
``--network-alias`` aliases become the libnet endpoint's name and aliases, so
libnet's DNS can answer them on other hosts.  Anything else (no API socket, a
``docker network connect`` of a running container, two containers starting at
once) leaves the endpoint its ``d-<id12>`` name: Docker's own DNS still answers
it on its host.  Every request is bounded by a short timeout.

The requests are ``http.client`` GETs over the unix socket, on a worker
thread (:func:`get_json`), not aiohttp's client: that client is most of
aiohttp's import (~4 MiB of the agent's RSS, issue 22), and the agent uses no
other; ``http.client`` is loaded by the agent anyway.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import urllib.parse
from typing import Any

log = logging.getLogger("libnet.agent.docker")
TIMEOUT = 2.0
MAX_ANSWER = 64 << 20  # bytes of one answer at most
#: what a request to dockerd may fail with (unreachable, timed out, cut off, not HTTP or not JSON)
FAILED = (OSError, TimeoutError, EOFError, ValueError, http.client.HTTPException)


class _UnixConnection(http.client.HTTPConnection):
    """``http.client``'s connection to an HTTP server on a unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _get(path: str, url: str, timeout: float) -> tuple[int, bytes]:
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        answer = conn.getresponse()
        if answer.length is not None and answer.length > MAX_ANSWER:
            raise ValueError("answer too large")
        # a Content-Length answer cut short raises IncompleteRead; others are read to their end
        body = answer.read() if answer.length is not None else answer.read(MAX_ANSWER + 1)
        if len(body) > MAX_ANSWER:
            raise ValueError("answer too large")
        return answer.status, body
    finally:
        conn.close()


async def get_json(path: str, url: str, timeout: float = TIMEOUT) -> Any:
    """``GET url`` on the HTTP API at unix socket ``path``: the decoded JSON answer, None for a
    status other than 200; one of :data:`FAILED` when it cannot be had within ``timeout`` s
    (each socket operation is bounded by it too, so the worker thread ends)."""
    async with asyncio.timeout(timeout):
        status, body = await asyncio.to_thread(_get, path, url, timeout)
    return json.loads(body) if status == 200 else None


class DockerNames:
    """dockerd's API (its unix socket ``socket_path``; None: never asked), read-only."""

    def __init__(self, socket_path: str | None) -> None:
        self.path = socket_path or None

    async def network_ids(self) -> set[str] | None:
        """The ids of every network dockerd has now; None when dockerd did not answer (then nothing
        can be concluded from it)."""
        if not self.path:
            return None
        try:
            networks = await get_json(self.path, "/networks")
            return None if networks is None else {str(n["Id"]) for n in networks}
        except (*FAILED, KeyError, TypeError) as exc:
            log.debug("docker API at %s: no network list (%s)", self.path, exc)
            return None

    async def daemon_id(self) -> str | None:
        """dockerd's own id (``GET /info`` ``ID``, kept across its restarts); None when it did not answer."""
        if not self.path:
            return None
        try:
            info = await get_json(self.path, "/info")
            return None if info is None else str(info["ID"]) or None
        except (*FAILED, KeyError, TypeError) as exc:
            log.debug("docker API at %s: no daemon id (%s)", self.path, exc)
            return None

    async def endpoint_ids(self, network_id: str) -> set[str] | None:
        """The ids of the endpoints dockerd has on ``network_id`` (joined or not: dockerd lists an
        endpoint without a container as ``ep-<id>``); None when dockerd did not answer for it."""
        if not self.path:
            return None
        try:
            doc = await get_json(self.path, f"/networks/{network_id}")
            return None if doc is None else {str(c["EndpointID"]) for c in (doc.get("Containers") or {}).values()}
        except (*FAILED, KeyError, TypeError, AttributeError) as exc:
            log.debug("docker API at %s: no endpoints of %s (%s)", self.path, network_id[:12], exc)
            return None

    async def identify(self, network_id: str, address: str | None) -> tuple[str, list[str]] | None:
        """(name, aliases) of the one container about to join ``network_id``; None when unsure."""
        if not self.path:
            return None
        try:
            net = await get_json(self.path, f"/networks/{network_id}")
            if not net:
                return None
            name = net["Name"]
            filters = urllib.parse.quote(json.dumps({"network": [name]}))
            exact, loose = [], []  # asked for this address (--ip); asked for none
            for c in await get_json(self.path, f"/containers/json?all=1&filters={filters}") or []:
                ep = (c.get("NetworkSettings") or {}).get("Networks", {}).get(name) or {}
                # a running container has its endpoints; a stopped one may still name the endpoint of
                # before a dockerd crash (dockerd was killed: never cleared), which says nothing
                if c.get("State") in ("running", "paused"):
                    continue
                wanted = ((ep.get("IPAMConfig") or {}).get("IPv4Address")) or None
                found = (c["Names"][0].lstrip("/"), list(ep.get("Aliases") or []))
                if wanted is None:
                    loose.append(found)
                elif wanted == address:
                    exact.append(found)
            if exact:
                return exact[0] if len(exact) == 1 else None
            return loose[0] if len(loose) == 1 else None
        except (*FAILED, KeyError, IndexError) as exc:
            log.info("docker API at %s: no container name (%s)", self.path, exc)
            return None
