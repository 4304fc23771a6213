"""Rotating a host's WireGuard key without losing a packet.

WireGuard knows a peer by its public key, allows each tunnel address to one
peer of an interface, and drops what a peer sends from an address outside
its allowed ones.  So a host R cannot simply change its key: the other hosts
would have to swap R's key at the very moment R does.  Instead R brings its
new key up *beside* the old one and moves over in one step:

1. **Prepare**: a second slot -- interface ``...b`` (or back to the first), a
   fresh key pair made locally, port ``port + 1``, a second tunnel address
   claimed in the store -- comes up with every peer; R's record lists it as a
   second identity.  Every other host adds it as one more peer (its own
   address, so nothing clashes) and acknowledges in the store
   (``<P>/acks/<R>/<host>``).  R waits for every host with a tunnel; a host
   that does not answer within ``ack_timeout`` aborts the rotation (the new
   slot is removed again; nothing was switched, nothing lost).
2. **Switch**: one route replace (``<range> dev <new> src <new address>``)
   moves R's encrypted VXLAN to the new key *and* the new source address
   together (only then is the new slot recorded as current: a replace that
   fails -- the new interface died -- undoes the rotation like a missing
   acknowledgement); the first packet to each host makes a handshake under the new
   key, which that host already accepts (WireGuard holds packets while it
   handshakes).  R's record now leads with the new identity; R rewrites its
   endpoints' peer records with the new VTEP, so the other hosts move their
   FDB entries (replaced before the old ones are deleted).
3. **Drain, retire**: what other hosts still send to the old address arrives
   on the old interface, which stays up until it has received nothing for
   ``idle`` seconds (at least ``min_drain`` after the switch, at most
   ``drain_max``); then it goes, with its address, key and identity.

WireGuard itself renews the session keys every two minutes; this rotates the
static key pair (the host's identity), by default every 12 hours
(``encryption_rotation``) and on demand (``libnet network rotate-keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from libnet.encryption import keys
from libnet.encryption.backend import Backend
from libnet.encryption.records import acks_prefix, claim_address, release_address, slot_owner
from libnet.encryption.tunnel import Slot, Tunnel
from libnet.errors import LibnetError, Unavailable

log = logging.getLogger("libnet.encryption")
#: seconds between two rotations of a host's key pair (``encryption_rotation``; 0: never)
DEFAULT_ROTATION = 12 * 3600.0
ACK_TIMEOUT = 15.0


async def rotate(
    t: Tunnel, ack_timeout: float = ACK_TIMEOUT, idle: float = 2.0, min_drain: float = 5.0, drain_max: float = 60.0
) -> dict[str, Any]:
    """Rotate this host's key pair (see the module docstring); returns what happened.

    Raises ``Unavailable`` when the tunnel is not up or another host did not
    acknowledge the new key (then nothing changed)."""
    backend = t.need_backend()
    if t.address is None:
        raise Unavailable("this host has no WireGuard tunnel yet (no encrypted network here)", node=t.node)
    async with t.rotation_lock:
        old, new = t.slots[t.current], t.slots[1 - t.current]
        await _prepare(t, backend, new, ack_timeout)
        started = time.monotonic()
        try:  # the switch first, then its record: a failed switch (the new interface died) switched nothing
            await asyncio.to_thread(t.route_via, new)
        except (LibnetError, OSError) as exc:
            await _undo(t, backend, old, new)
            raise Unavailable(
                f"the new WireGuard interface {new.ifname} could not take this host's encrypted traffic ({exc}); "
                "the rotation was undone, the old key stays (try again)",
                node=t.node,
            ) from exc
        await asyncio.to_thread(t.write_current, new.index)
        t.current = new.index
        await t.publish()
        for listener in t.switch_listeners:
            await listener()
        drained = await _drain(backend, old, idle, min_drain, drain_max)
        t.live.discard(old.index)
        async with t.sync_lock:
            await asyncio.to_thread(backend.delete, old.ifname)
        await t.publish()
        await release_address(t.store, t.node, old.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(t.dir, keys.key_file(old.index)))
        old.address, old.private, old.public = "", "", ""
        t.rotations += 1
        log.info("wireguard key rotated: %s (%s) now; %s retired", new.ifname, new.address, old.ifname)
        return {
            "interface": new.ifname,
            "tunnel_address": new.address,
            "public_key": new.public,
            "drained": drained,
            "seconds": round(time.monotonic() - started, 2),
        }


async def _prepare(t: Tunnel, backend: Backend, new: Slot, ack_timeout: float) -> None:
    """The new slot up and acknowledged by every host with a tunnel, or undone."""
    for pair in await t.store.list(acks_prefix(t.node)):
        await t.store.delete(pair.key)
    new.address = await claim_address(t.store, t.range, slot_owner(t.node, new.index))
    new.private, new.public = await asyncio.to_thread(keys.make_new, t.dir, new.index)
    try:
        await asyncio.to_thread(t.bring_up, backend, new)
        t.live.add(new.index)  # supervised and synced from now on, not half made
        await t.sync()  # records that changed while it came up
        await t.publish()
        missing = await _acknowledged(t, new.public, ack_timeout)
        if missing:
            raise Unavailable(
                f"hosts {', '.join(sorted(missing))} did not accept the new WireGuard key within {ack_timeout:g} s; "
                "the rotation was undone (is their agent running?)",
                node=t.node,
            )
    except BaseException:
        await _undo(t, backend, t.slots[t.current], new)
        raise


async def _undo(t: Tunnel, backend: Backend, old: Slot, new: Slot) -> None:
    """A rotation that did not switch: the new slot goes (interface, identity, address), the route stays
    through ``old``."""
    t.live.discard(new.index)
    with contextlib.suppress(LibnetError, OSError):
        await asyncio.to_thread(t.route_via, old)  # where it was (a failed replace changed nothing)
    with contextlib.suppress(LibnetError, OSError):
        async with t.sync_lock:  # not while the supervision brings the new slot back (it would stay, unsupervised)
            await asyncio.to_thread(backend.delete, new.ifname)
        await t.publish()
        await release_address(t.store, t.node, new.index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(t.dir, keys.key_file(new.index)))
    new.address, new.private, new.public = "", "", ""


async def _acknowledged(t: Tunnel, public: str, timeout: float) -> set[str]:
    """Wait until every other unrevoked host with a record acknowledged ``public``; the hosts still missing."""
    woke = asyncio.Event()
    t.acked = woke.set
    deadline = time.monotonic() + timeout
    try:
        while True:
            acked = {
                pair.key.rsplit("/", 1)[1]
                for pair in await t.store.list(acks_prefix(t.node))
                if pair.value.decode(errors="replace") == public
            }
            # a gone host is not waited for: it configures the new key from the record when it comes back
            missing = {n for n in t.records if n != t.node and n not in t.revoked and not t.gone(n)} - acked
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            woke.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(woke.wait(), min(left, 0.5))
    finally:
        t.acked = lambda: None


async def _drain(backend: Backend, old: Slot, idle: float, min_drain: float, drain_max: float) -> bool:
    """Wait until the old slot received nothing for ``idle`` s (after at least ``min_drain`` s);
    False if ``drain_max`` s passed first."""
    start = time.monotonic()
    last, quiet_since = -1, start
    while time.monotonic() - start < drain_max:
        try:
            rx = await asyncio.to_thread(backend.rx_bytes, old.ifname)
        except LibnetError:
            return True  # the interface is gone already: nothing can arrive on it
        now = time.monotonic()
        if rx != last:
            last, quiet_since = rx, now
        elif now - quiet_since >= idle and now - start >= min_drain:
            return True
        await asyncio.sleep(0.25)
    log.warning("wireguard interface %s still received traffic after %g s; retired anyway", old.ifname, drain_max)
    return False


def key_age(t: Tunnel) -> float:
    """Seconds since the current key pair was made (its file's age)."""
    try:
        return time.time() - os.stat(os.path.join(t.dir, keys.key_file(t.current))).st_mtime
    except OSError:
        return 0.0


async def rotate_periodically(t: Tunnel, every: float, check: float = 60.0) -> None:
    """Rotate whenever the current key pair is ``every`` seconds old (checked every ``check`` s)."""
    while True:
        await asyncio.sleep(min(check, max(every - key_age(t), 1.0)))
        if t.address is None or key_age(t) < every:
            continue
        try:
            await rotate(t)
        except LibnetError as exc:
            log.warning("periodic wireguard key rotation: %s; retried in %g s", exc, check)
            await asyncio.sleep(check)
