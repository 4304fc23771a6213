"""Forget what dockerd forgot while the plugin did not hear it.

dockerd tells a plugin about a removed container or network once
(``DeleteEndpoint``, ``DeleteNetwork``).  When the agent is down at that
moment, dockerd logs the failed call and goes on (libnetwork drops its own
record anyway), so libnet would keep the network, its pool, the endpoint, its
published ports and its staging sandbox for ever: the subnet and the ports stay
blocked and reconcile even repairs them.

So the plugin compares its id mapping (``libnet/v1/docker/``) with dockerd's
API (``GET /networks``, ``GET /networks/{id}``) when it starts and then every
``interval`` seconds:

- a Docker network dockerd no longer has -> its libnet network is deleted
  (after this host's endpoints on it), as ``DeleteNetwork`` would have done;
- a Docker endpoint dockerd no longer lists on a network it still has ->
  deleted as ``DeleteEndpoint`` would have done;
- a mapping whose libnet endpoint is gone (``libnet endpoint rm`` by hand)
  -> its staging sandbox and the mapping go.

Only what dockerd *answered* counts: no answer (dockerd down, restarting,
another error) concludes nothing.  Only the dockerd that uses this plugin
counts: its id (``GET /info``) is recorded once it lists one of the plugin's
networks, and a dockerd with another id, or an unrecorded one listing none of
them (e.g. ``--docker-host`` pointing at another dockerd), concludes nothing.
Mappings younger than ``grace`` seconds are left alone, since dockerd writes
its own record only after the plugin's call returns; and an object must be
missing in two comparisons in a row, since dockerd drops its own record
just before it sends ``DeleteEndpoint`` (a removal under way is not one
dockerd forgot).  Only objects the plugin
made for Docker are ever touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libnet.errors import LibnetError, NotFound

if TYPE_CHECKING:
    from agent.docker_names import DockerNames
    from agent.docker_plugin import DockerPlugin

log = logging.getLogger("libnet.agent.docker")

#: seconds between comparisons; and the age a mapping needs before dockerd's silence about it counts
INTERVAL, GRACE = 30.0, 30.0


@dataclass
class SyncReport:
    """What one comparison removed (Docker ids), or why it concluded nothing."""

    networks: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    unstaged: list[str] = field(default_factory=list)  # mappings whose libnet endpoint was gone
    skipped: str = ""  # e.g. "dockerd did not answer"


class DockerSync:
    """See the module docstring.  ``clock``: seconds (``time.time``), for the ages of mappings."""

    def __init__(
        self,
        plugin: DockerPlugin,
        docker: DockerNames,
        interval: float = INTERVAL,
        grace: float = GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plugin, self.docker, self.interval, self.grace = plugin, docker, interval, grace
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._missing: set[str] = set()  # Docker ids missing from dockerd at the last comparison

    def _old(self, m: dict[str, object]) -> bool:
        at = m.get("at")
        return not isinstance(at, (int, float)) or self.clock() - at >= self.grace

    async def once(self) -> SyncReport:
        """One comparison (module docstring)."""
        report = SyncReport()
        have = await self.docker.network_ids()
        if have is None:
            report.skipped = "dockerd did not answer"
            return report
        plugin = self.plugin
        async with plugin.lock:
            networks = await plugin.mappings("networks")
            endpoints = await plugin.mappings("endpoints")
            why = await self._not_ours(have, networks)
            if why:
                report.skipped = why
                return report
            missing: set[str] = set()
            gone_nets = set()
            for nid, m in networks.items():
                if nid not in have and self._old(m):
                    missing.add(nid)
                    if nid in self._missing:
                        gone_nets.add(nid)
            listed: dict[str, set[str] | None] = {}
            for eid, m in endpoints.items():
                nid = str(m.get("docker_network", ""))
                try:
                    await plugin.ctl.endpoint(m["endpoint"])
                except NotFound:
                    await plugin.forget_endpoint(eid, m)  # gone in libnet: its staging sandbox and mapping go
                    report.unstaged.append(eid)
                    continue
                if not self._old(m):
                    continue
                if nid not in have:
                    gone = True
                else:
                    if nid not in listed:
                        listed[nid] = await self.docker.endpoint_ids(nid)
                    known = listed[nid]
                    gone = known is not None and eid not in known
                if gone:
                    missing.add(eid)
                if gone and eid in self._missing:
                    log.warning(
                        "docker endpoint %s is gone from dockerd (removed while the plugin did not hear it): "
                        "removing libnet endpoint %s",
                        eid[:12],
                        str(m["endpoint"])[:12],
                    )
                    await plugin.forget_endpoint(eid, m)
                    report.endpoints.append(eid)
            for nid in sorted(gone_nets):
                log.warning(
                    "docker network %s is gone from dockerd (removed while the plugin did not hear it): "
                    "removing libnet network %s",
                    nid[:12],
                    str(networks[nid]["network"])[:12],
                )
                try:
                    await plugin.forget_network(nid, networks[nid])
                except LibnetError as exc:  # e.g. endpoints of libnet's own API on it: those stay
                    log.warning("docker network %s: libnet network kept: %s", nid[:12], exc)
                    continue
                report.networks.append(nid)
            self._missing = missing - set(report.networks) - set(report.endpoints)
        return report

    async def _not_ours(self, have: set[str], networks: dict[str, dict[str, object]]) -> str:
        """Why the dockerd answering is not known to be the one using this plugin ("" when it is)."""
        daemon = await self.docker.daemon_id()
        if daemon is None:
            return "dockerd did not say its id"
        recorded = await self.plugin.daemon()
        if recorded == daemon:
            return ""
        if recorded is None and have & set(networks):  # it has the plugin's networks: it is the one
            await self.plugin.set_daemon(daemon)
            return ""
        if recorded is None:
            return "dockerd lists none of the plugin's networks and was never seen with one"
        log.warning(
            "docker sync: %s answers as dockerd %s, not %s that uses this plugin: nothing removed",
            self.docker.path,
            daemon[:12],
            recorded[:12],
        )
        return f"another dockerd ({daemon[:12]}, not {recorded[:12]})"

    async def _loop(self) -> None:
        while True:
            try:
                report = await self.once()
                if report.networks or report.endpoints or report.unstaged:
                    log.info(
                        "docker sync: removed %d network(s), %d endpoint(s), %d staging sandbox(es) dockerd forgot",
                        len(report.networks),
                        len(report.endpoints),
                        len(report.unstaged),
                    )
            except (LibnetError, OSError) as exc:
                log.warning("docker sync failed (tried again in %.0f s): %s", self.interval, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Compare now and then every ``interval`` seconds, in the background."""
        if self._task is None and self.docker.path:
            self._task = asyncio.create_task(self._loop(), name="docker-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
