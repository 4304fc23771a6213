"""At start, before reconcile: is this the store the kernel's state was made with?

Reconcile removes what this instance owns in the kernel and its store does
not know.  So a store that lost its records -- deleted, a mistyped
``--store``, a lost SQLite ``-wal`` -- would make the agent remove every
running container's network (DESIGN.md, "Ownership": nothing in the store
must never mean delete everything).  This guard runs after the stores are
opened and before anything else reads or changes them:

- **store identity**: on first start a random store id is written under
  :data:`STORE_ID_KEY` in the local store and in ``<state_dir>/store-id``.
  A store without the id the state dir expects is not the store this
  instance ran with.
- **lost store**: the local store lacks the expected id (or, with no id
  expected, is empty and has none), while the instance owns marked kernel objects
  (:func:`libnet.inventory.scan`): the agent refuses to start and names the
  store, what it found, and the two ways on: ``--adopt`` (rebuild the store
  from the kernel, :mod:`libnet.adopt`) or ``--purge`` (remove all of the
  instance's objects, :func:`libnet.inventory.purge`).
- **damaged store**: a store that cannot be read, or a record that does not
  decode, stops the agent with one line naming the store (and the record's
  key); nothing is changed.

With no kernel objects at stake an empty or new store is simply used (and
given the state dir's id).  An empty store that carries the expected id is
the store this instance ran with (e.g. its first network's create was cut
short): it is used, and reconcile -- which never removes what containers
use -- cleans up.  The ids are written only after an adopt or purge
finished, so an adopt cut short is refused again, and can be run again
(adopting keeps what is already stored).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libnet import inventory, model
from libnet.errors import KeyNotFound, LibnetError

if TYPE_CHECKING:
    from libnet.store.base import Store

log = logging.getLogger("libnet.agent")
STORE_ID_KEY = "libnet/v1/store-id"
STORE_ID_FILE = "store-id"
_OBJECTS = (("networks", "network"), ("sandboxes", "sandbox"), ("endpoints", "endpoint"))


class StoreRefused(LibnetError):
    """The agent will not run on this store; nothing was changed."""

    kind = "refused"


@dataclass
class StoreContents:
    """The libnet objects of a local store, by kind (names or ids), and its id."""

    objects: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    corrupt: list[str] = field(default_factory=list)  # keys of records that do not decode
    store_id: str | None = None
    owner: str | None = None  # the libnet instance the store belongs to (recorded with its id)

    def empty(self) -> bool:
        """No network, sandbox or endpoint (damaged records count as something)."""
        return not any(self.objects.values()) and not self.corrupt

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in self.objects.items() if v]
        return ", ".join(parts) or "nothing"


async def read_store(store: Store) -> StoreContents:
    """Read every network, sandbox and endpoint record and the IPAM pool documents
    (raises on an unreadable store; records that do not decode are listed by key)."""
    out = StoreContents()
    for prefix, kind in _OBJECTS:
        names = out.objects.setdefault(prefix, [])
        for pair in await store.list(f"libnet/v1/{prefix}/"):
            try:
                data = model.decode(pair.value, kind)
                _check_fields(kind, data)
                names.append(str(data.get("name") or data.get("id") or pair.key.rsplit("/", 1)[-1]))
            except (LibnetError, AttributeError, TypeError, ValueError):
                out.corrupt.append(pair.key)
    for prefix in ("libnet/v1/names/", "libnet/v1/endpoint-ids/", "libnet/v1/ipam/local/addresses/"):
        for pair in await store.list(prefix):  # plain values: owner ids, utf-8
            try:
                pair.value.decode()
            except UnicodeDecodeError:
                out.corrupt.append(pair.key)
    for space in ("local", "global"):  # the IPAM's pool documents, read by the first reconcile
        key = f"libnet/v1/ipam/{space}/pools"
        try:
            model.decode((await store.get(key)).value, "ipam_pools")
        except KeyNotFound:
            pass
        except LibnetError:
            out.corrupt.append(key)
    try:
        sid, _, owner = (await store.get(STORE_ID_KEY)).value.decode().strip().partition("\n")
        out.store_id, out.owner = sid.strip() or None, owner.strip() or None
    except KeyNotFound:
        out.store_id = None
    except UnicodeDecodeError:
        out.corrupt.append(STORE_ID_KEY)
    return out


def _check_fields(kind: str, data: dict[str, Any]) -> None:
    """Raise TypeError/ValueError when a decoded record cannot be used (missing
    fields, wrong types, addresses that do not parse)."""
    import ipaddress

    from libnet.model import Endpoint, Network, Sandbox

    classes: dict[str, type[Network] | type[Endpoint] | type[Sandbox]]
    classes = {"network": Network, "endpoint": Endpoint, "sandbox": Sandbox}
    cls = classes[kind]
    obj = cls.from_data(data)  # TypeError on missing fields
    for name in ("id", "name", "network_id", "netns", "driver", "scope"):
        if hasattr(obj, name) and not isinstance(getattr(obj, name), str):
            raise TypeError(f"{name} is not a string")
    for name in ("ipv4_subnet", "ipv6_subnet"):
        if getattr(obj, name, None) is not None:
            ipaddress.ip_network(getattr(obj, name))
    for name in ("ipv4_gateway", "ipv6_gateway", "ipv4", "ipv6"):
        if getattr(obj, name, None) is not None:
            ipaddress.ip_interface(getattr(obj, name))
    if isinstance(obj, Sandbox) and not all(isinstance(e, str) for e in obj.endpoints):
        raise TypeError("endpoints is not a list of ids")


def read_id_file(state_dir: str) -> str | None:
    """The store id ``<state_dir>/store-id`` expects, or None."""
    try:
        with open(os.path.join(state_dir, STORE_ID_FILE)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def write_id_file(state_dir: str, store_id: str) -> None:
    path = os.path.join(state_dir, STORE_ID_FILE)
    os.makedirs(state_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(store_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Verdict:
    """What :func:`decide` concluded: refuse (with ``message``) or go on."""

    refuse: bool
    lost: bool  # the store is empty or not the expected one
    message: str = ""


def decide(
    store_url: str,
    state_dir: str,
    instance: str,
    contents: StoreContents,
    expected: str | None,
    owned: inventory.Inventory,
    adopt: bool = False,
    purge: bool = False,
) -> Verdict:
    """The guard's decision (pure; see the module docstring)."""
    mismatch = expected is not None and contents.store_id != expected
    # Empty but carrying the expected id: the store this instance ran with, merely
    # with nothing in it (a first network's create cut short, or records lost
    # after the id was written -- reconcile keeps whatever containers use).
    lost = mismatch or (contents.empty() and contents.store_id is None)
    if contents.owner and contents.owner != instance and not contents.empty():
        return Verdict(
            True,
            lost,
            f"refusing to start: the store {store_url} belongs to libnet instance {contents.owner}, and this "
            f"state dir ({state_dir}) is instance {instance}. Nothing was changed. Either another agent uses "
            "this store (give every agent its own --store), or this state dir lost its instance id: "
            f"restore it with: echo {contents.owner} > {os.path.join(state_dir, 'instance-id')}",
        )
    if contents.corrupt:
        more = f" (and {len(contents.corrupt) - 1} more)" if len(contents.corrupt) > 1 else ""
        return Verdict(
            True,
            lost,
            f"the store {store_url} holds a damaged record at key {contents.corrupt[0]}{more}; nothing was "
            "changed. Repair or delete that record, or move the store aside and start with --adopt (rebuild "
            "it from the kernel) or --purge",
        )
    if purge and not contents.empty():
        return Verdict(
            True,
            lost,
            f"--purge refused: the store {store_url} still holds {contents.summary()}; --purge is for a "
            "store that was lost. Remove those objects with libnet (sandbox rm, network rm), or point --store "
            "at the right store",
        )
    if not lost or owned.empty() or adopt or purge:
        return Verdict(False, lost)
    found: list[str] = []
    if contents.empty():
        found.append("holds no libnet objects (no networks, sandboxes or endpoints)")
    if mismatch:
        have = f"store id {contents.store_id}" if contents.store_id else "no store id"
        found.append(
            f"is not the store this state dir ({state_dir}) was used with: it has {have}, "
            f"{os.path.join(state_dir, STORE_ID_FILE)} expects {expected} (a deleted store file or a mistyped "
            "--store?)"
        )
    what = f"the store {store_url} " + " and ".join(found)
    return Verdict(
        True,
        lost,
        f"refusing to start: {what},\n"
        f"  but this libnet instance ({instance}) owns {owned.summary()} in the kernel;\n"
        "  running on this store could cut them off. Nothing was changed. If --store is mistyped, fix it;\n"
        + (
            "  otherwise choose one:\n"
            "    libnet-agent --adopt   rebuild the store from the kernel (bridge networks, sandboxes, endpoints)\n"
            "    libnet-agent --purge   remove all of this instance's objects from the kernel, then start empty"
            if contents.empty()
            else "  otherwise, if this is the right store (only its id was lost), start with\n"
            "    libnet-agent --adopt   keep what the store holds and add what the kernel has beyond it"
        ),
    )


async def check(
    store: Store,
    store_url: str,
    state_dir: str,
    instance: str,
    node: str,
    host_ns: str | None = None,
    adopt: bool = False,
    purge: bool = False,
) -> list[str]:
    """Run the guard on the opened local ``store``: raise :class:`StoreRefused`, or
    adopt/purge as asked and record the store id; returns the lines it logged."""
    try:
        contents = await read_store(store)
    except LibnetError as exc:
        raise StoreRefused(f"cannot read the store {store_url}: {exc.message}; nothing was changed") from None
    except Exception as exc:  # e.g. sqlite3.DatabaseError "file is not a database"
        raise StoreRefused(
            f"cannot read the store {store_url} ({type(exc).__name__}: {exc}); nothing was changed. Move the "
            "damaged store aside and start with --adopt (rebuild it from the kernel) or --purge"
        ) from None
    expected = read_id_file(state_dir)
    owned = await asyncio.to_thread(inventory.scan, instance, state_dir, host_ns)
    for problem in owned.problems:
        log.warning("could not read all of this instance's kernel objects: %s", problem)
    verdict = decide(store_url, state_dir, instance, contents, expected, owned, adopt, purge)
    if verdict.refuse:
        raise StoreRefused(verdict.message)
    lines: list[str] = []
    if purge:
        removed = await asyncio.to_thread(inventory.purge, owned, state_dir, host_ns)
        lines += [f"purge: removed {line}" for line in removed] or ["purge: this instance owned nothing"]
    elif adopt:
        from libnet.adopt import adopt as rebuild

        report = await rebuild(store, instance=instance, state_dir=state_dir, node=node, host_ns=host_ns)
        lines.append(f"adopt: {report.summary()}")
        lines += [f"adopt: not adopted: {line}" for line in report.skipped]
    elif verdict.lost and not contents.empty() and expected is not None:
        lines.append(f"the store {store_url} was another state's (store id {contents.store_id}); using it from now on")
    for line in lines:
        log.info("%s", line)
    await _record_id(store, state_dir, contents, expected, instance)
    return lines


async def _record_id(
    store: Store, state_dir: str, contents: StoreContents, expected: str | None, instance: str
) -> None:
    """Make store and state dir agree on the store id (the store's wins when both have one),
    and record in the store which instance it belongs to."""
    in_store = contents.store_id
    store_id = in_store or expected or secrets.token_hex(16)
    if in_store != store_id or contents.owner != instance:
        await store.put(STORE_ID_KEY, f"{store_id}\n{instance}".encode())
    if expected != store_id:
        write_id_file(state_dir, store_id)
