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
    def __init__(self, socket_path: str | None) -> None:
        self.path = socket_path or None

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
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            connector = aiohttp.UnixConnector(path=self.path)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
                net = await self._get(s, f"/networks/{network_id}")
                if not net:
                    return None
                name = net["Name"]
                filters = urllib.parse.quote(json.dumps({"network": [name]}))
                exact, loose = [], []  # asked for this address (--ip); asked for none
                for c in await self._get(s, f"/containers/json?all=1&filters={filters}") or []:
                    ep = (c.get("NetworkSettings") or {}).get("Networks", {}).get(name) or {}
                    if ep.get("EndpointID") or c.get("State") == "running":
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
