"""Typed access to the stored networks, endpoints and sandboxes.

Keys under ``libnet/v1/``::

    networks/<id>                          Network
    names/networks/<lowercase name>        -> network id   (create-only: unique names)
    endpoints/<network id>/<id>            Endpoint
    names/endpoints/<network id>/<name>    -> endpoint id
    endpoint-ids/<id>                      -> network id   (find an endpoint by id)
    sandboxes/<id>                         Sandbox
    netns/<namespace identity>             -> sandbox id   (the sandbox whose namespace it is)
    proxies/<id>                           Proxy
    names/proxies/<lowercase name>         -> proxy id

Local-scope networks, their endpoints and proxies live in the local store, global-scope
ones in the cluster store (a proxy is global when both its networks are); sandboxes are always local.  Every update goes
through ``model.update_json`` (read-modify-CAS).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from libnet import model
from libnet.errors import (
    Ambiguous,
    BadRequest,
    CorruptRecord,
    KeyExists,
    KeyModified,
    KeyNotFound,
    NameInUse,
    NoSuchEndpoint,
    NoSuchNetwork,
    NoSuchProxy,
    NoSuchSandbox,
)
from libnet.model import Endpoint, Network, Proxy, Sandbox
from libnet.store.base import KVPair, Store, Write, write_all

P = "libnet/v1"
#: store pairs remembered as the start of checked writes (Repository._remember)
PAIRS_KEPT = 256
_FULL_ID = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T", Network, Endpoint, Sandbox, Proxy)


def _by_prefix(what: str, ref: str, objects: list[T]) -> T | None:
    """The one of ``objects`` whose id starts with ``ref``; None if none does; ``Ambiguous``
    if several do (Docker's words: ``network ab12 is ambiguous (2 matches found based on ID
    prefix)``)."""
    matches = [o for o in objects if o.id.startswith(ref)]
    if len(matches) > 1:
        raise Ambiguous(
            f"{what} {ref} is ambiguous ({len(matches)} matches found based on ID prefix)",
            ref=ref,
            matches=len(matches),
        )
    return matches[0] if matches else None


class Repository:
    """Stored objects over a local and a cluster store."""

    def __init__(self, local: Store, cluster: Store) -> None:
        self.local, self.cluster = local, cluster
        self._decoded: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}  # (kind, key) -> (revision, data)
        # endpoint id -> (store, record key): an endpoint never moves, so its index is read once
        self._endpoint_keys: dict[str, tuple[Store, str]] = {}
        # record key -> the pair of an endpoint or sandbox last read or written here: only ever the
        # starting point of a checked write (read-modify-CAS without the read), never returned as
        # data, so a pair another writer has since replaced costs a lost race, not a stale record
        self._pairs: dict[str, KVPair] = {}
        #: every stored sandbox's namespace has its claim (see :meth:`index_namespaces`)
        self.namespaces_indexed = False

    def _remember(self, key: str, pair: KVPair) -> None:
        """Keep ``pair`` as the start of the next checked write of ``key``: the most recent
        ``PAIRS_KEPT`` only (an operation writes what it read milliseconds before; holding every
        record's bytes cost ~1.4 MiB at 1,000 containers)."""
        pairs = self._pairs
        pairs.pop(key, None)
        pairs[key] = pair
        if len(pairs) > PAIRS_KEPT:
            del pairs[next(iter(pairs))]

    def held_revision(self, key: str) -> int | None:
        """The revision of the pair of ``key`` last read or written here (None: none held): it
        moves with every write made here (and with reads that find a newer one)."""
        pair = self._pairs.get(key)
        return None if pair is None else pair.revision

    def _written(self, kind: str, key: str, pair: KVPair, data: dict[str, Any]) -> None:
        """Keep the document of ``pair`` just written here (its ``data``, copied) as if it had been
        read: the operation reads it again right after (issue 22: 5 of the 11 decodings of a
        connect+disconnect were of records it had written itself)."""
        self._decoded[(kind, key)] = (pair.revision, model.stored_copy(data))

    def _data(self, pair: Any, kind: str) -> dict[str, Any]:
        """The decoded document of a pair, decoded once per revision."""
        cached = self._decoded.get((kind, pair.key))
        if cached is not None and cached[0] == pair.revision:
            return cached[1]
        try:
            data = model.decode(pair.value, kind)
        except BadRequest as exc:  # damaged in the store, not a bad request: name the key
            raise CorruptRecord(
                f"the store record {pair.key} is damaged ({exc.message}); repair or remove it", key=pair.key
            ) from None
        self._decoded[(kind, pair.key)] = (pair.revision, data)
        return data

    def _load(self, cls: type[T], pair: Any) -> T:
        """The stored object of a pair (``CorruptRecord`` naming the key if it cannot be one)."""
        try:
            return cls.from_data(self._data(pair, cls.KIND))
        except TypeError as exc:
            raise CorruptRecord(
                f"the store record {pair.key} is damaged ({exc}); repair or remove it", key=pair.key
            ) from None

    def store(self, scope: str) -> Store:
        return self.cluster if scope == "global" else self.local

    def _stores(self) -> list[Store]:
        return [self.local] if self.cluster is self.local else [self.local, self.cluster]

    def stores(self) -> list[Store]:
        """The local store, and the cluster store if it is another one."""
        return self._stores()

    def _forget(self, prefix: str, kind: str, present: set[str]) -> None:
        """Drop cached documents of keys that a full listing no longer shows."""
        for cached in [k for k in self._decoded if k[0] == kind and k[1].startswith(prefix) and k[1] not in present]:
            del self._decoded[cached]
        for key in [k for k in self._pairs if k.startswith(prefix) and k not in present]:
            del self._pairs[key]

    async def _get(self, store: Store, key: str, cls: type[T]) -> T | None:
        try:
            pair = await store.get(key)
        except KeyNotFound:
            self._pairs.pop(key, None)
            return None
        obj = self._load(cls, pair)
        if cls is Endpoint or cls is Sandbox:
            self._remember(key, pair)
        return obj

    @staticmethod
    async def _create(store: Store, key: str, obj: Network | Endpoint | Sandbox | Proxy) -> None:
        await store.atomic_put(key, model.encode(obj.KIND, obj.to_data()), None)

    async def _update(self, store: Store, key: str, cls: type[T], fn: Callable[[T], None]) -> T:
        result: list[T] = []
        written: list[dict[str, Any]] = []

        def apply(data: dict[str, Any] | None) -> dict[str, Any]:
            if data is None:
                raise KeyNotFound("object vanished", key=key)
            obj = cls.from_data(data)
            fn(obj)
            result[:] = [obj]
            written[:] = [obj.to_data()]
            return written[0]

        def apply_raw(raw: bytes | None) -> bytes:
            return model.encode(cls.KIND, apply(None if raw is None else model.decode(raw, cls.KIND, intern=False)))

        try:  # model.update_json's read-modify-CAS, from the pair held already (and keeping the new one)
            pair = await model.update(store, key, apply_raw, first=self._pairs.get(key))
        except KeyNotFound:
            self._pairs.pop(key, None)
            raise
        if pair is not None and (cls is Endpoint or cls is Sandbox):
            self._remember(key, pair)
            if written:
                self._written(cls.KIND, key, pair, written[0])
        return result[0]

    async def revisions(self) -> tuple[int, ...]:
        """The revisions of the stores: unchanged means nothing was written."""
        return tuple([await store.revision() for store in self._stores()])

    # --- names ------------------------------------------------------------------

    async def reserve_name(
        self, store: Store, key: str, owner_id: str, what: str, name: str, instance: str = ""
    ) -> None:
        """Reserve a name for ``owner_id``; the value also records the reserving ``instance``."""
        value = f"{owner_id}\n{instance}" if instance else owner_id
        try:
            await store.atomic_put(key, value.encode(), None)
        except KeyExists:
            holder = (await store.get(key)).value.decode().partition("\n")[0]
            raise NameInUse(f"{what} name {name!r} is already in use", name=name, holder=holder) from None

    @staticmethod
    def name_write(key: str, owner_id: str, instance: str = "") -> Write:
        """:meth:`reserve_name` as a create-only write for the caller's transaction."""
        return Write(key, (f"{owner_id}\n{instance}" if instance else owner_id).encode(), None, checked=True)

    async def name_in_use(self, store: Store, key: str, what: str, name: str) -> NameInUse:
        """The error :meth:`reserve_name` raises for a name another holds."""
        try:
            holder = (await store.get(key)).value.decode().partition("\n")[0]
        except KeyNotFound:  # freed again meanwhile
            holder = ""
        return NameInUse(f"{what} name {name!r} is already in use", name=name, holder=holder)

    async def name_keys(self, store: Store) -> set[str]:
        """The keys of every name reservation in ``store``."""
        return {pair.key for pair in await store.list(f"{P}/names/")}

    @staticmethod
    def network_name_key(name: str) -> str:
        return f"{P}/names/networks/{name.lower()}"

    @staticmethod
    def endpoint_name_key(network_id: str, name: str) -> str:
        return f"{P}/names/endpoints/{network_id}/{name.lower()}"

    async def stale_names(
        self, network_ids: set[str], endpoint_ids: set[str], instance: str, proxy_ids: set[str] | None = None
    ) -> list[str]:
        """Delete name reservations of ``instance`` whose owner does not exist; returns their keys.

        Only the instance's own reservations (and, in the local store, the
        untagged ones of older versions): another instance's may belong to an
        operation in flight on another host.  The caller holds the operation
        gate, so none of this instance's is in flight."""
        gone = []
        for store in self._stores():
            local = store is self.local
            for pair in await store.list(f"{P}/names/"):
                owner, _, by = pair.value.decode().partition("\n")
                if by != instance and not (local and not by):
                    continue
                if pair.key.startswith(f"{P}/names/proxies/"):
                    if proxy_ids is None:
                        continue  # the caller does not know the proxies: leave their names alone
                    known = proxy_ids
                else:
                    known = network_ids if pair.key.startswith(f"{P}/names/networks/") else endpoint_ids
                if owner not in known:
                    try:
                        await store.atomic_delete(pair.key, pair)
                    except (KeyModified, KeyNotFound):
                        continue  # taken again meanwhile
                    gone.append(pair.key)
        return gone

    # --- networks ---------------------------------------------------------------

    async def add_network(self, nw: Network) -> None:
        await self._create(self.store(nw.scope), f"{P}/networks/{nw.id}", nw)

    async def networks(self) -> list[Network]:
        out: list[Network] = []
        for store in self._stores():
            pairs = await store.list(f"{P}/networks/")
            out += [self._load(Network, pair) for pair in pairs]
            self._forget(f"{P}/networks/", Network.KIND, {p.key for p in pairs})
        return sorted(out, key=lambda n: n.name)

    async def network(self, ref: str) -> Network:
        """By id, by name, or by a unique id prefix.

        A ``ref`` that is not a full id (64 hex digits, as every network id libnet makes) is
        looked up by name before by id: its id key is a read that misses (issue 22: one of a
        connect's 8 reads and a disconnect's 11, with the exception it raised).  A full id is
        looked up as an id first, as before (a name may look like another network's id)."""
        by_id_first = _FULL_ID.fullmatch(ref) is not None
        for store in self._stores():
            if by_id_first:
                nw = await self._network_by_id(store, ref) or await self._named(store, ref)
            else:
                nw = await self._named(store, ref) or await self._network_by_id(store, ref)
            if nw is not None:
                return nw
        if len(ref) >= 4 and (nw := _by_prefix("network", ref, await self.networks())) is not None:
            return nw
        raise NoSuchNetwork("no such network", network=ref)

    async def _network_by_id(self, store: Store, nid: str) -> Network | None:
        try:
            return await self._get(store, f"{P}/networks/{nid}", Network)
        except BadRequest:  # a ref that cannot be a key is simply no id
            return None

    async def network_named(self, name: str) -> Network | None:
        """The network called exactly ``name`` (its name reservation), None if there is none:
        no id and no prefix matching, so no listing of every network."""
        for store in self._stores():
            nw = await self._named(store, name)
            if nw is not None:
                return nw
        return None

    async def _named(self, store: Store, name: str) -> Network | None:
        try:
            nid = (await store.get(self.network_name_key(name))).value.decode().partition("\n")[0]
        except (KeyNotFound, BadRequest):  # a ref that cannot be a key is simply no name
            return None
        return await self._get(store, f"{P}/networks/{nid}", Network) if nid else None

    async def update_network(self, nw: Network, fn: Callable[[Network], None]) -> Network:
        return await self._update(self.store(nw.scope), f"{P}/networks/{nw.id}", Network, fn)

    async def delete_network(self, nw: Network) -> None:
        store = self.store(nw.scope)
        await store.delete(f"{P}/networks/{nw.id}")
        await store.delete(self.network_name_key(nw.name))

    # --- endpoints --------------------------------------------------------------

    async def add_endpoint(self, nw: Network, ep: Endpoint, before: Sequence[Write] = ()) -> list[KVPair | None]:
        """Store a new endpoint and its id index; ``before``: writes of the same store made
        first, in the same transaction where the store has them (its name and addresses).
        Returns the pairs written (:func:`libnet.store.base.write_all`), ``before``'s first."""
        store = self.store(nw.scope)
        # the index first: on a store without batches a crash between the two writes leaves
        # an index without a record (harmless), never a record nothing can find by id
        data = ep.to_data()
        record = model.encode(ep.KIND, data)
        key = f"{P}/endpoints/{nw.id}/{ep.id}"
        written = await write_all(
            store,
            [
                *before,
                Write(f"{P}/endpoint-ids/{ep.id}", nw.id.encode()),
                Write(key, record, None, checked=True),
            ],
        )
        self._endpoint_keys[ep.id] = (store, key)  # where it is: no read of the index it just wrote
        if written[-1] is not None:
            self._remember(key, written[-1])
            self._written(Endpoint.KIND, key, written[-1], data)
        return written

    async def endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        out: list[Endpoint] = []
        prefix = f"{P}/endpoints/" + (f"{network_id}/" if network_id else "")
        for store in self._stores():
            pairs = await store.list(prefix)
            out += [self._load(Endpoint, pair) for pair in pairs]
            self._forget(prefix, Endpoint.KIND, {p.key for p in pairs})
        return sorted(out, key=lambda e: (e.network_id, e.name))

    async def _endpoint_key(self, ref: str, cached: bool = True) -> tuple[Store, str] | None:
        """Where the endpoint with id ``ref`` is stored.  An endpoint's record never
        moves (its network and that network's scope are fixed), so the index is
        read once; a record found gone at a remembered place (another host or
        process deleted it) is looked up afresh (``cached=False``)."""
        if cached and ref in self._endpoint_keys:
            return self._endpoint_keys[ref]
        for store in self._stores():
            try:
                nid = (await store.get(f"{P}/endpoint-ids/{ref}")).value.decode()
            except (KeyNotFound, BadRequest):
                continue
            self._endpoint_keys[ref] = (store, f"{P}/endpoints/{nid}/{ref}")
            return self._endpoint_keys[ref]
        self._endpoint_keys.pop(ref, None)
        if _FULL_ID.fullmatch(ref):  # no index (written by an older version, or lost): look it up
            for store in self._stores():
                for pair in await store.list(f"{P}/endpoints/"):
                    if pair.key.endswith("/" + ref):
                        return store, pair.key
        return None

    async def endpoint(self, ref: str, network_id: str | None = None) -> Endpoint:
        """By id, by unique id prefix, or by name within ``network_id``."""
        found = await self._endpoint_key(ref)
        if found is not None:
            ep = await self._get(*found, Endpoint)
            if ep is None and ref in self._endpoint_keys:  # gone from where it was: ask the index again
                found = await self._endpoint_key(ref, cached=False)
                ep = None if found is None else await self._get(*found, Endpoint)
            if ep is not None:
                return ep
        if network_id is not None:
            for store in self._stores():
                try:
                    eid = (await store.get(self.endpoint_name_key(network_id, ref))).value.decode().partition("\n")[0]
                except (KeyNotFound, BadRequest):
                    continue
                return await self.endpoint(eid)
        if len(ref) >= 4 and (ep := _by_prefix("endpoint", ref, await self.endpoints(network_id))) is not None:
            return ep
        raise NoSuchEndpoint("no such endpoint", endpoint=ref, network_id=network_id)

    async def update_endpoint(self, ep: Endpoint, fn: Callable[[Endpoint], None]) -> Endpoint:
        for cached in (True, False):
            found = await self._endpoint_key(ep.id, cached)
            if found is None:
                break
            try:
                return await self._update(found[0], found[1], Endpoint, fn)
            except KeyNotFound:
                if not cached:
                    raise
        raise NoSuchEndpoint("no such endpoint", endpoint_id=ep.id)

    async def delete_endpoint(self, nw: Network, ep: Endpoint, before: Sequence[Write] = ()) -> None:
        """Delete the endpoint's record, id index and name; ``before``: writes of the same store
        made first, in the same transaction where the store has them (its addresses' releases)."""
        store = self.store(nw.scope)
        self._endpoint_keys.pop(ep.id, None)
        self._pairs.pop(f"{P}/endpoints/{nw.id}/{ep.id}", None)
        keys = [f"{P}/endpoints/{nw.id}/{ep.id}", f"{P}/endpoint-ids/{ep.id}", self.endpoint_name_key(nw.id, ep.name)]
        await write_all(store, [*before, *(Write(key, None) for key in keys)])

    async def unjoin_and_delete_endpoint(
        self,
        nw: Network,
        ep: Endpoint,
        sb: Sandbox,
        sb_fn: Callable[[Sandbox], None],
        before: Sequence[Write] = (),
    ) -> Sandbox | None:
        """A disconnect's last store step in one transaction (issue 22: it took two, the leave's
        update of the endpoint thrown away by the delete right after): ``sb_fn`` applied to
        the sandbox, and the endpoint's record, id index and name deleted; ``before``: writes of
        the same store made first (its addresses' releases).  Each record is checked against
        the pair this operation holds (read or written moments ago).  Returns the sandbox as
        stored; None, with nothing changed, where it cannot be done so (not both records held,
        not in the local store or no batches there, either record changed meanwhile): the
        caller then takes the usual way (:meth:`update_endpoint_and_sandbox`, then
        :meth:`delete_endpoint`)."""
        store = self.store(nw.scope)
        ep_key, sb_key = f"{P}/endpoints/{nw.id}/{ep.id}", f"{P}/sandboxes/{sb.id}"
        held_ep, held_sb = self._pairs.get(ep_key), self._pairs.get(sb_key)
        if store is not self.local or held_ep is None or held_sb is None:
            return None
        if getattr(store, "atomic_batch", None) is None:
            return None
        new_sb = Sandbox.from_data(model.decode(held_sb.value, Sandbox.KIND, intern=False))
        sb_fn(new_sb)
        data = new_sb.to_data()
        writes = [
            *before,
            Write(sb_key, model.encode(Sandbox.KIND, data), held_sb, checked=True),
            Write(ep_key, None, held_ep, checked=True),
            Write(f"{P}/endpoint-ids/{ep.id}", None),
            Write(self.endpoint_name_key(nw.id, ep.name), None),
        ]
        try:
            written = await write_all(store, writes)
        except (KeyExists, KeyModified, KeyNotFound):  # changed meanwhile: nothing was written
            return None
        self._endpoint_keys.pop(ep.id, None)
        self._pairs.pop(ep_key, None)
        pair = written[len(before)]
        assert pair is not None
        self._remember(sb_key, pair)
        self._written(Sandbox.KIND, sb_key, pair, data)
        return new_sb

    async def update_endpoint_and_sandbox(
        self,
        ep: Endpoint,
        ep_fn: Callable[[Endpoint], None],
        sb: Sandbox,
        sb_fn: Callable[[Sandbox], None],
        *,
        ep_undo: Callable[[Endpoint], None] | None = None,
    ) -> tuple[Endpoint, Sandbox]:
        """:meth:`update_endpoint` and then :meth:`update_sandbox` (a join or leave records both):
        in one transaction when both records are in the local store and it has batches
        (:func:`libnet.store.base.write_all`), read-modify-CAS of the two together; else one
        after the other, and if the sandbox's update fails, the endpoint's is undone with
        ``ep_undo`` (when given) before the error is raised."""
        found = await self._endpoint_key(ep.id)
        if found is None or found[0] is not self.local or getattr(self.local, "atomic_batch", None) is None:
            return await self._update_one_by_one(ep, ep_fn, sb, sb_fn, ep_undo)
        ep_key, sb_key = found[1], f"{P}/sandboxes/{sb.id}"
        delay = 0.001
        # the first attempt from the pairs held already (read by this operation: one read per
        # record); the writes are checked against their revisions, so if either is no longer
        # current the attempt is lost and the next one reads both afresh
        held_ep, held_sb = self._pairs.get(ep_key), self._pairs.get(sb_key)
        guess = (held_ep, held_sb) if held_ep is not None and held_sb is not None else None
        for _ in range(model.DEFAULT_ATTEMPTS + (guess is not None)):
            if guess is not None:
                ep_pair, sb_pair = guess
            else:
                try:
                    ep_pair, sb_pair = await self.local.get(ep_key), await self.local.get(sb_key)
                except KeyNotFound:  # gone (or moved): the one-by-one path says which, as it always did
                    return await self._update_one_by_one(ep, ep_fn, sb, sb_fn, ep_undo)
            # decoded afresh (the cached documents must not see the changes), not interned: dropped at once
            new_ep = Endpoint.from_data(model.decode(ep_pair.value, Endpoint.KIND, intern=False))
            new_sb = Sandbox.from_data(model.decode(sb_pair.value, Sandbox.KIND, intern=False))
            try:
                ep_fn(new_ep)
                sb_fn(new_sb)
            except Exception:
                if guess is None:
                    raise
                guess = None  # refused on the held records: decide on the current ones
                continue
            datas = {ep_key: new_ep.to_data(), sb_key: new_sb.to_data()}
            writes = [
                Write(pair.key, value, pair, checked=True)
                for pair, value in (
                    (ep_pair, model.encode(Endpoint.KIND, datas[ep_key])),
                    (sb_pair, model.encode(Sandbox.KIND, datas[sb_key])),
                )
                if value != pair.value
            ]
            if guess is not None and len(writes) < 2:  # an unwritten record's held pair may be old
                guess = None
                continue
            try:
                written = await write_all(self.local, writes)
            except (KeyExists, KeyModified, KeyNotFound):  # a concurrent writer: read again
                if guess is not None:
                    guess = None
                    continue
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.05)
                continue
            for w, pair in zip(writes, written, strict=True):
                if pair is not None:
                    self._remember(w.key, pair)
                    self._written(Endpoint.KIND if w.key == ep_key else Sandbox.KIND, w.key, pair, datas[w.key])
            return new_ep, new_sb
        raise model.Contention(
            f"gave up updating after {model.DEFAULT_ATTEMPTS} conflicting attempts",
            key=ep_key,
            attempts=model.DEFAULT_ATTEMPTS,
        )

    async def _update_one_by_one(
        self,
        ep: Endpoint,
        ep_fn: Callable[[Endpoint], None],
        sb: Sandbox,
        sb_fn: Callable[[Sandbox], None],
        ep_undo: Callable[[Endpoint], None] | None,
    ) -> tuple[Endpoint, Sandbox]:
        new_ep = await self.update_endpoint(ep, ep_fn)
        try:
            new_sb = await self.update_sandbox(sb, sb_fn)
        except BaseException:
            if ep_undo is not None:
                with contextlib.suppress(Exception):  # the caller's error is the one to see
                    await self.update_endpoint(new_ep, ep_undo)
            raise
        return new_ep, new_sb

    # --- sandboxes --------------------------------------------------------------

    @staticmethod
    def netns_key(netns_id: str) -> str:
        return f"{P}/netns/{netns_id}"

    async def netns_claim(self, netns_id: str) -> tuple[KVPair | None, Sandbox | None]:
        """The claim on the namespace of identity ``netns_id`` (None if there is none) and
        its holder's record (None if that is gone): one read, or two (issue 22: creating a
        sandbox listed every sandbox to find the holder).  The caller checks that the
        holder's path still shows that namespace (an identity is reused after its
        namespace is gone), and passes the claim to :meth:`add_sandbox` to take it over."""
        key = self.netns_key(netns_id)
        try:
            pair = await self.local.get(key)
        except KeyNotFound:
            return None, None
        holder = pair.value.decode()
        try:
            sb = await self._get(self.local, f"{P}/sandboxes/{holder}", Sandbox)
        except BadRequest:  # not a key: a damaged claim, held by nobody
            sb = None
        return pair, sb

    async def index_namespaces(self, identity: Callable[[str], str | None]) -> int:
        """Claim the namespaces of sandboxes stored without a claim (records of older
        versions, adopted ones), so :meth:`netns_claim` finds every holder; once per
        repository (:attr:`namespaces_indexed`), again after :meth:`add_sandbox` stored one
        without a claim.  Returns how many were claimed."""
        claimed = 0
        for sb in await self.sandboxes():
            if not sb.netns or sb.netns_id:
                continue
            netns_id = identity(sb.netns)
            if netns_id is None:  # its namespace is gone: it holds none
                continue
            with contextlib.suppress(KeyExists):  # claimed already (by it, or a newer one)
                await self.local.atomic_put(self.netns_key(netns_id), sb.id.encode(), None)
                claimed += 1
        self.namespaces_indexed = True
        return claimed

    async def add_sandbox(self, sb: Sandbox, claim: KVPair | None = None) -> None:
        """Store a new sandbox (``KeyExists`` naming its key if one has its id) and, when it has
        a ``netns_id``, its claim on that namespace in the same transaction: created, or taken
        over from ``claim`` (the stale claim the caller read); ``KeyExists``/``KeyModified``
        naming the claim's key if another sandbox claimed it meanwhile (nothing is stored then)."""
        key = f"{P}/sandboxes/{sb.id}"
        record = model.encode(sb.KIND, sb.to_data())
        if not sb.netns_id:
            if sb.netns:
                self.namespaces_indexed = False
            self._remember(key, await self.local.atomic_put(key, record, None))
            return
        claim_key = self.netns_key(sb.netns_id)
        writes = [Write(claim_key, sb.id.encode(), claim, checked=True), Write(key, record, None, checked=True)]
        if getattr(self.local, "atomic_batch", None) is not None:
            written = await write_all(self.local, writes)
            assert written[1] is not None
            self._remember(key, written[1])
            return
        # one by one (no batches): the record first, then the claim; the record is taken back if
        # the claim cannot be made.  Not the claim first: a creation reading the claim between
        # the two writes would find no holder record and take the claim over as stale (both
        # sandboxes made on one namespace).  A claim whose holder record is missing is stale only
        # this way round (delete_sandbox removes the claim before the record).
        pair = await self.local.atomic_put(key, record, None)
        try:
            await write_all(self.local, writes[:1])
        except BaseException:
            with contextlib.suppress(Exception):
                await self.local.atomic_delete(key, pair)
            raise
        self._remember(key, pair)

    async def sandboxes(self) -> list[Sandbox]:
        pairs = await self.local.list(f"{P}/sandboxes/")
        self._forget(f"{P}/sandboxes/", Sandbox.KIND, {p.key for p in pairs})
        return [self._load(Sandbox, p) for p in pairs]

    async def has_sandbox(self, sandbox_id: str) -> bool:
        """Whether a sandbox with exactly this id exists."""
        return await self.local.exists(f"{P}/sandboxes/{sandbox_id}")

    async def sandbox(self, ref: str) -> Sandbox:
        """By id or unique id prefix."""
        try:
            sb = await self._get(self.local, f"{P}/sandboxes/{ref}", Sandbox)
        except BadRequest:  # a ref that cannot be a key is no id
            sb = None
        if sb is not None:
            return sb
        if len(ref) >= 4 and (found := _by_prefix("sandbox", ref, await self.sandboxes())) is not None:
            return found
        raise NoSuchSandbox("no such sandbox", sandbox=ref)

    async def update_sandbox(self, sb: Sandbox, fn: Callable[[Sandbox], None]) -> Sandbox:
        return await self._update(self.local, f"{P}/sandboxes/{sb.id}", Sandbox, fn)

    async def delete_sandbox(self, sb: Sandbox) -> None:
        """Delete the sandbox's record and its namespace claim if it still holds it."""
        key = f"{P}/sandboxes/{sb.id}"
        self._pairs.pop(key, None)
        if sb.netns_id:
            claim_key = self.netns_key(sb.netns_id)
            try:
                claim = await self.local.get(claim_key)
            except KeyNotFound:
                claim = None
            if claim is not None and claim.value == sb.id.encode():
                with contextlib.suppress(KeyModified, KeyNotFound):  # taken over meanwhile: not ours
                    await write_all(self.local, [Write(claim_key, None, claim, checked=True), Write(key, None)])
                    return
        await self.local.delete(key)

    # --- proxies ----------------------------------------------------------------

    @staticmethod
    def proxy_name_key(name: str) -> str:
        return f"{P}/names/proxies/{name.lower()}"

    async def add_proxy(self, px: Proxy) -> None:
        await self._create(self.store(px.scope), f"{P}/proxies/{px.id}", px)

    async def proxies(self) -> list[Proxy]:
        out: list[Proxy] = []
        for store in self._stores():
            pairs = await store.list(f"{P}/proxies/")
            out += [self._load(Proxy, pair) for pair in pairs]
            self._forget(f"{P}/proxies/", Proxy.KIND, {p.key for p in pairs})
        return sorted(out, key=lambda x: x.name)

    async def proxy(self, ref: str) -> Proxy:
        """By id, by name, or by a unique id prefix."""
        for store in self._stores():
            try:
                px = await self._get(store, f"{P}/proxies/{ref}", Proxy)
                if px is None:
                    pid = (await store.get(self.proxy_name_key(ref))).value.decode().partition("\n")[0]
                    px = await self._get(store, f"{P}/proxies/{pid}", Proxy)
            except (KeyNotFound, BadRequest):  # no such name, or a ref that cannot be a key
                px = None
            if px is not None:
                return px
        if len(ref) >= 4 and (found := _by_prefix("proxy", ref, await self.proxies())) is not None:
            return found
        raise NoSuchProxy("no such proxy", proxy=ref)

    async def update_proxy(self, px: Proxy, fn: Callable[[Proxy], None]) -> Proxy:
        return await self._update(self.store(px.scope), f"{P}/proxies/{px.id}", Proxy, fn)

    async def delete_proxy(self, px: Proxy) -> None:
        store = self.store(px.scope)
        await store.delete(f"{P}/proxies/{px.id}")
        await store.delete(self.proxy_name_key(px.name))


class Reads:
    """Endpoints and networks read at most once within one step of one operation (issue 22:
    the gateway policy and the DNS binding look at the same records right after a join or
    leave).  Made by the step and dropped with it: never kept across operations, so it
    cannot serve another operation's (or process's) old records."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._endpoints: dict[str, Endpoint] = {}
        self._networks: dict[str, Network] = {}
        self._sandboxes: dict[str, tuple[Sandbox, int | None]] = {}  # id -> (record, revision)

    def keep(self, ep: Endpoint, nw: Network | None = None) -> None:
        """Records the step has as they are now (the endpoint its join just wrote; the network
        its operation read: a network's record changes only by its removing mark)."""
        self._endpoints[ep.id] = ep
        if nw is not None and nw.id == ep.network_id:
            self._networks[nw.id] = nw

    def keep_sandbox(self, sb: Sandbox) -> None:
        """The sandbox as the step wrote it (a join's record of it), not read again while it is
        current (see :meth:`current`)."""
        self._sandboxes[sb.id] = (sb, self.repo.held_revision(f"{P}/sandboxes/{sb.id}"))

    def current(self, sb: Sandbox) -> bool:
        """Whether ``sb`` is the sandbox's record as kept here and no write of it was seen here
        since (another operation's join or leave once the step's join released the sandbox's
        lock: its record would take that endpoint out of the gateway policy and the DNS view
        again).  Told by the revision of the pair the repository holds: no store read."""
        kept = self._sandboxes.get(sb.id)
        return (
            kept is not None
            and kept[0] is sb
            and kept[1] is not None
            and self.repo.held_revision(f"{P}/sandboxes/{sb.id}") == kept[1]
        )

    async def sandbox(self, ref: str) -> Sandbox:
        """A sandbox by id: the one kept while current, else read (``NotFound`` if gone)."""
        kept = self._sandboxes.get(ref)
        if kept is not None and self.current(kept[0]):
            return kept[0]
        sb = await self.repo.sandbox(ref)
        self._sandboxes[ref] = (sb, self.repo.held_revision(f"{P}/sandboxes/{sb.id}"))
        return sb

    async def endpoint(self, ref: str) -> Endpoint:
        ep = self._endpoints.get(ref)
        if ep is None:
            ep = self._endpoints[ref] = await self.repo.endpoint(ref)
        return ep

    async def network(self, ref: str) -> Network:
        nw = self._networks.get(ref)
        if nw is None:
            nw = self._networks[ref] = await self.repo.network(ref)
        return nw
