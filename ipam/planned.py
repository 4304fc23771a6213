"""An address chosen for a write the caller makes in its own transaction
(:meth:`ipam.ipam.StoreIpam.allocation_write`, issue 22: an endpoint's name, addresses and
records in one commit instead of four).

The address is held in the allocator's memory from the choice on (another allocation of this
process passes it by), and the caller reports the outcome: :meth:`PlannedAddress.made` (written),
:meth:`PlannedAddress.dropped` (not written: free again) or :meth:`PlannedAddress.lost`
(the write found the key taken: held by someone else; :meth:`PlannedAddress.in_use` is the
error for an address that was asked for by name).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from libnet.errors import AddressInUse
from libnet.store.base import KVPair, Store, Write

if TYPE_CHECKING:
    from ipam.ipam import StoreIpam

#: how far past a lost address the next choice starts, at most (as ipam.ipam's allocation)
STRIDE = 64


class PlannedAddress:
    """One chosen address: ``store`` takes ``write`` (create-only); ``cidr`` is the
    endpoint's address; ``wanted``: asked for by name (never chosen again elsewhere)."""

    def __init__(self, ipam: StoreIpam, store: Store, state: Any, n: int, value: bytes, wanted: bool) -> None:
        self._ipam, self.store, self._state, self._n, self.wanted = ipam, store, state, n, wanted
        self.write = Write(state.key(n), value, None, checked=True)
        self.cidr: str = state.cidr(n)
        self._dynamic = state.alloc_lo <= n <= state.alloc_hi
        self._held = self._dynamic and n not in state.used
        if self._dynamic:
            state.used.add(n)
            if not wanted:
                state.cursor = n

    def made(self, pair: KVPair | None = None) -> None:
        """Written: it stays held.  ``pair``: the key as written, remembered (with the owner)
        so that its release needs no read while it is current (:meth:`StoreIpam.release_write`)."""
        if pair is not None:
            self._state.written[self._n] = (pair.revision, pair.value.decode().partition("\n")[0])

    def dropped(self) -> None:
        """Not written (the transaction failed on something else): free again."""
        self._state.written.pop(self._n, None)
        if self._held:
            self._state.used.discard(self._n)
            self._held = False

    def lost(self) -> None:
        """The key was taken (another host or process): held by it; the next choice starts a
        little further on."""
        self._held = False
        self._state.written.pop(self._n, None)
        self._ipam.conflicts += 1
        if not self.wanted:
            self._state.cursor = min(self._n + random.randrange(STRIDE), self._state.alloc_hi)

    async def in_use(self) -> AddressInUse:
        """The error for an address asked for by name that the write found taken."""
        from ipam.ipam import _ip_str  # the allocator's own wording

        n, state = self._n, self._state
        holder = await self._ipam._holder_of(self.store, self.write.key)
        return AddressInUse(
            f"address {_ip_str(n, state.v6)} {holder}", pool_id=state.record["id"], address=self.cidr.split("/")[0]
        )
