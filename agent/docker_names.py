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
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import aiohttp

log = logging.getLogger("libnet.agent.docker")
TIMEOUT = 2.0


class DockerNames:
    """dockerd's API (its unix socket ``socket_path``; None: never asked), read-only."""

    def __init__(self, socket_path: str | None) -> None:
        self.path = socket_path or None

    def _session(self) -> aiohttp.ClientSession:
        assert self.path is not None
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.path), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
        )

    async def network_ids(self) -> set[str] | None:
        """The ids of every network dockerd has now; None when dockerd did not answer (then nothing
        can be concluded from it)."""
        if not self.path:
            return None
        try:
            async with self._session() as s, s.get("http://docker/networks") as r:
                if r.status != 200:
                    return None
                return {str(n["Id"]) for n in await r.json(content_type=None)}
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError) as exc:
            log.debug("docker API at %s: no network list (%s)", self.path, exc)
            return None

    async def daemon_id(self) -> str | None:
        """dockerd's own id (``GET /info`` ``ID``, kept across its restarts); None when it did not answer."""
        if not self.path:
            return None
        try:
            async with self._session() as s, s.get("http://docker/info") as r:
                if r.status != 200:
                    return None
                return str((await r.json(content_type=None))["ID"]) or None
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError) as exc:
            log.debug("docker API at %s: no daemon id (%s)", self.path, exc)
            return None

    async def endpoint_ids(self, network_id: str) -> set[str] | None:
        """The ids of the endpoints dockerd has on ``network_id`` (joined or not: dockerd lists an
        endpoint without a container as ``ep-<id>``); None when dockerd did not answer for it."""
        if not self.path:
            return None
        try:
            async with self._session() as s, s.get(f"http://docker/networks/{network_id}") as r:
                if r.status != 200:
                    return None
                doc = await r.json(content_type=None)
                return {str(c["EndpointID"]) for c in (doc.get("Containers") or {}).values()}
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.debug("docker API at %s: no endpoints of %s (%s)", self.path, network_id[:12], exc)
            return None

    async def _get(self, session: aiohttp.ClientSession, url: str) -> Any:
        async with session.get(f"http://docker{url}") as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)

    async def identify(self, network_id: str, address: str | None) -> tuple[str, list[str]] | None:
        """(name, aliases) of the one container about to join ``network_id``; None when unsure."""
        if not self.path:
            return None
        try:
            async with self._session() as s:
                net = await self._get(s, f"/networks/{network_id}")
                if not net:
                    return None
                name = net["Name"]
                filters = urllib.parse.quote(json.dumps({"network": [name]}))
                exact, loose = [], []  # asked for this address (--ip); asked for none
                for c in await self._get(s, f"/containers/json?all=1&filters={filters}") or []:
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
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, IndexError, ValueError) as exc:
            log.info("docker API at %s: no container name (%s)", self.path, exc)
            return None
