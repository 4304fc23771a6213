"""VNI allocation for overlay networks, in the cluster store.

Two keys per network: ``<P>/vni/<vni>`` -> network id (the claim, made with
a compare-and-swap so two hosts never take the same VNI) and
``<P>/networks/<id>`` -> VNI (the lookup).  Allocation is all or nothing:
when the second write fails the claim is withdrawn again (``Rollback``).

Besides the store's claims, the VNIs this host's namespace ledger shows in
use by another network are never given out (a store that lost its keys must
not hand a live network's VNI to a new one); asking for such a VNI
explicitly is a ``Conflict``.  A network whose keys the store lost gets them
back from the ledger (:meth:`VniAllocator.get`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from libnet.driverapi import NetworkInfo
from libnet.errors import Conflict, KeyExists, KeyModified, KeyNotFound, Unavailable
from libnet.rollback import Rollback
from libnet.store.base import Store

log = logging.getLogger("libnet.drivers.overlay")
VNI_MIN, VNI_MAX = 256, (1 << 24) - 1
#: the overlay driver's keys in the cluster store
P = "libnet/v1/overlay"


class VniAllocator:
    """The VNIs of overlay networks (see the module docstring).

    ``local_vnis`` (blocking) gives VNI -> network id of this instance's
    existing overlay namespaces; ``ns_name`` the namespace of a VNI."""

    def __init__(self, local_vnis: Callable[[], dict[int, str]], ns_name: Callable[[int], str]) -> None:
        self._local_vnis, self._ns_name = local_vnis, ns_name
        self._known: dict[str, int] = {}  # network id -> VNI, as far as this process has seen them

    def cached(self, network_id: str) -> int | None:
        """The network's VNI if this process knows it (no store read)."""
        return self._known.get(network_id)

    async def allocate(self, store: Store, nw: NetworkInfo) -> int:
        """Claim a VNI for ``nw`` (its ``vni`` option, else the lowest free one)."""
        wanted: int | None = nw.options.get("vni")
        here = await asyncio.to_thread(self._local_vnis)
        other = here.get(wanted) if wanted else None
        if wanted and other is not None and other != nw.id:
            raise Conflict(
                f"VNI {wanted} is in use on this host by overlay network {other[:12]} "
                f"(namespace {self._ns_name(wanted)})",
                vni=wanted,
                netns=self._ns_name(wanted),
                other_network_id=other,
            )
        taken = {int(pair.key.rsplit("/", 1)[1]) for pair in await store.list(f"{P}/vni/")}
        taken |= {vni for vni, owner in here.items() if owner != nw.id}
        candidates = [wanted] if wanted else (vni for vni in range(VNI_MIN, VNI_MAX + 1) if vni not in taken)
        for vni in candidates:
            async with Rollback() as undo:
                try:
                    await store.atomic_put(f"{P}/vni/{vni}", nw.id.encode(), None)
                except KeyExists:
                    if wanted:
                        raise Conflict(f"VNI {vni} is in use by another overlay network", vni=vni) from None
                    continue
                undo.push(self._withdraws(store, vni, nw.id), f"withdraw the claim on VNI {vni}")
                await store.put(f"{P}/networks/{nw.id}", str(vni).encode())
            self._known[nw.id] = vni
            return vni
        raise Unavailable("no free VNI left")

    @staticmethod
    def _withdraws(store: Store, vni: int, network_id: str) -> Callable[[], Awaitable[None]]:
        async def withdraw() -> None:
            await _delete_claim(store, vni, network_id)

        return withdraw

    async def release(self, store: Store, network_id: str) -> None:
        """Give the network's VNI back; a claim that is another network's now is left alone."""
        with contextlib.suppress(KeyNotFound, KeyModified):
            vni = int((await store.get(f"{P}/networks/{network_id}")).value)
            await _delete_claim(store, vni, network_id)
        await store.delete(f"{P}/networks/{network_id}")
        self._known.pop(network_id, None)

    async def get(self, store: Store, network_id: str) -> int:
        """The network's VNI: from the cluster store, else (the store lost it)
        from this host's ledger, which then restores the store's keys."""
        if network_id not in self._known:
            try:
                self._known[network_id] = int((await store.get(f"{P}/networks/{network_id}")).value)
            except KeyNotFound:
                here = await asyncio.to_thread(self._local_vnis)
                vni = next((v for v, owner in here.items() if owner == network_id), None)
                if vni is None:
                    raise Unavailable(
                        "the overlay network has no VNI in the cluster store", network_id=network_id
                    ) from None
                await _restore(store, network_id, vni)
                self._known[network_id] = vni
        return self._known[network_id]


async def _delete_claim(store: Store, vni: int, network_id: str) -> None:
    """Delete ``<P>/vni/<vni>`` if it is still ``network_id``'s (after a store
    loss the VNI may be another network's now)."""
    with contextlib.suppress(KeyNotFound, KeyModified):
        pair = await store.get(f"{P}/vni/{vni}")
        if pair.value == network_id.encode():
            await store.atomic_delete(pair.key, pair)


async def _restore(store: Store, network_id: str, vni: int) -> None:
    log.warning(
        "overlay network %s has no VNI in the cluster store; restoring VNI %d from this host's namespace ledger",
        network_id[:12],
        vni,
    )
    try:
        await store.atomic_put(f"{P}/vni/{vni}", network_id.encode(), None)
    except KeyExists:
        log.error("VNI %d of overlay network %s is allocated to another network too", vni, network_id[:12])
    with contextlib.suppress(KeyExists):
        await store.atomic_put(f"{P}/networks/{network_id}", str(vni).encode(), None)
