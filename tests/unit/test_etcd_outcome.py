"""etcd writes whose answer was lost at the deadline: never reported failed while they stand.

A fake aetcd client stands in for a cluster that loses its leader: the member
takes a write, forwards it, and the answer never comes back before the
caller's deadline; the write is applied later, once a leader is elected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aetcd.exceptions
import pytest

from libnet.errors import StoreOutcomeUnknown, StoreUnavailable
from libnet.store import etcd as etcd_store
from libnet.store.etcd import EtcdStore


@dataclass
class _Meta:
    mod_revision: int


@dataclass
class _Header:
    revision: int


@dataclass
class _Result:
    header: _Header


@dataclass
class _Lease:
    id: int


class _Deleted:
    def __init__(self, deleted: int) -> None:
        self.response_delete_range = self
        self.deleted = deleted


class _Txns:
    """Builds the compare and op tuples the fake client evaluates."""

    class _Field:
        def __init__(self, what: str, key: bytes) -> None:
            self.what, self.key = what, key

        def __eq__(self, other: object) -> Any:  # a compare, as aetcd builds them
            return (self.what, self.key, other)

        __hash__ = None  # type: ignore[assignment]

    def version(self, key: bytes) -> Any:
        return self._Field("version", key)

    def mod(self, key: bytes) -> Any:
        return self._Field("mod", key)

    def put(self, key: bytes, value: bytes, lease: Any = None) -> Any:
        return ("put", key, value)

    def delete(self, key: bytes) -> Any:
        return ("delete", key)

    def get(self, key: bytes) -> Any:
        return ("get", key)


class FakeCluster:
    """One key space; ``script`` says per try: "lost" (applied, answer never
    comes), "hang" (never answers, not applied), "refused" (not sent),
    "answer"; after the script, tries answer while ``loop.time() >= answer_after``
    and hang before."""

    def __init__(self, script: list[str], answer_after: float = 0.0) -> None:
        self.script = list(script)
        self.answer_after = answer_after
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.revision = 1
        self.tries = 0
        self.transactions = _Txns()
        self.stale: list[tuple[list[Any], list[Any], list[Any]]] = []
        #: puts (fence raises) hang too while tries hang after the script
        self.puts_hang = False
        #: move every fence key before each transaction (other writes of its store raising it)
        self.move_fences = 0

    def deliver_stale(self) -> list[bool]:
        """Apply the tries that waited (a member resumed): whether each one's compares held."""
        held = []
        for compare, success, failure in self.stale:
            ok = all(self._holds(c) for c in compare)
            self._apply(success if ok else failure)
            held.append(ok)
        self.stale.clear()
        return held

    def _step(self) -> str:
        self.tries += 1
        if self.script:
            return self.script.pop(0)
        return "answer" if asyncio.get_running_loop().time() >= self.answer_after else "hang"

    def _holds(self, compare: tuple[str, bytes, int]) -> bool:
        what, key, want = compare
        if what == "version":
            return (key in self.data) == (want != 0)
        return self.data.get(key, (b"", 0))[1] == want

    async def lease(self, ttl: int) -> Any:
        self.leases = getattr(self, "leases", 0) + 1
        return _Lease(self.leases)

    async def revoke_lease(self, lease_id: int) -> None:
        self.revoked = [*getattr(self, "revoked", []), lease_id]

    async def put(self, key: bytes, value: bytes, lease: Any = None) -> Any:
        if self.puts_hang and asyncio.get_running_loop().time() < self.answer_after:
            await asyncio.sleep(3600)
        self.revision += 1
        self.data[key] = (value, self.revision)
        return _Result(_Header(self.revision))

    def _apply(self, ops: list[Any]) -> list[Any]:
        out: list[Any] = []
        for op in ops:
            if op[0] == "put":
                self.revision += 1
                self.data[op[1]] = (op[2], self.revision)
                out.append(None)
            elif op[0] == "delete":
                gone = self.data.pop(op[1], None)
                self.revision += gone is not None
                out.append(_Deleted(int(gone is not None)))
            else:
                kv = self.data.get(op[1])
                out.append([] if kv is None else [(kv[0], _Meta(kv[1]))])
        return out

    async def transaction(self, compare: list[Any], success: list[Any], failure: list[Any]) -> tuple[bool, list[Any]]:
        """Compare tuples are ('version'|'mod', key, value); see :class:`_Txns`."""
        step = self._step()
        if self.move_fences and step == "answer":
            self.move_fences -= 1
            for key in [k for k in self.data if k.startswith(b"~libnet-fence/")]:
                self.revision += 1
                self.data[key] = (b"", self.revision)
        if step == "refused":
            raise aetcd.exceptions.ConnectionFailedError("failed to connect to all addresses")
        ok = all(self._holds(c) for c in compare)
        if step == "lost":
            self._apply(success if ok else failure)
            await asyncio.sleep(3600)
        if step == "stale":  # waits in a stopped member; applied when the test says
            self.stale.append((compare, success, failure))
            await asyncio.sleep(3600)
        if step == "hang":
            await asyncio.sleep(3600)
        return ok, self._apply(success if ok else failure)

    async def close(self) -> None:
        pass


def _store(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, timeout: float = 0.4) -> EtcdStore:
    monkeypatch.setattr(etcd_store, "ATTEMPT_S", 0.1)
    store = EtcdStore([("127.0.0.1", 1)], timeout=timeout)

    async def connected() -> Any:
        return cluster

    monkeypatch.setattr(store, "_connected", connected)
    return store


def test_a_create_applied_after_the_deadline_is_reported_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first try lands but its answer is lost; the cluster answers again only
    after the caller's deadline.  Before: StoreUnavailable while the key stood."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = FakeCluster(["lost"], answer_after=loop.time() + 0.5)
        store = _store(cluster, monkeypatch)
        pair = await store.atomic_put("libnet/t/k", b"mine", None)
        assert pair.value == b"mine"
        assert cluster.data[b"libnet/t/k"][0] == b"mine"

    asyncio.run(main())


def test_a_write_that_never_gets_an_answer_is_reported_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = FakeCluster(["lost"], answer_after=loop.time() + 3600)
        store = _store(cluster, monkeypatch)
        start = loop.time()
        with pytest.raises(StoreOutcomeUnknown) as err:
            await store.atomic_put("libnet/t/k", b"mine", None)
        assert err.value.ids["key"] == "libnet/t/k"
        assert 0.7 <= loop.time() - start < 2.0  # the deadline and one more to settle

    asyncio.run(main())


def test_a_write_never_sent_is_plainly_unavailable_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = FakeCluster(["refused"] * 1000)
        store = _store(cluster, monkeypatch)
        start = loop.time()
        with pytest.raises(StoreUnavailable) as err:
            await store.atomic_put("libnet/t/k", b"mine", None)
        assert not isinstance(err.value, StoreOutcomeUnknown)
        assert loop.time() - start < 0.7
        assert b"libnet/t/k" not in cluster.data

    asyncio.run(main())


def test_a_lost_compare_and_swap_settles_on_a_later_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = FakeCluster(["answer"])
        store = _store(cluster, monkeypatch)
        first = await store.atomic_put("libnet/t/k", b"one", None)
        cluster.script = ["lost"]
        cluster.answer_after = loop.time() + 0.5
        pair = await store.atomic_put("libnet/t/k", b"two", first)
        assert pair.value == b"two" and pair.revision > first.revision

    asyncio.run(main())


def test_a_try_that_waited_in_a_stopped_member_cannot_bring_a_deleted_key_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create whose first try sits in a stopped member's socket buffer is retried
    elsewhere and lands; the key is then deleted; the member resumes and applies
    the old try.  Before: the key was back (a create-only compare holds again)."""

    async def main() -> None:
        cluster = FakeCluster(["stale"])
        store = _store(cluster, monkeypatch, timeout=2.0)
        pair = await store.atomic_put("libnet/t/k", b"mine", None)
        await store.atomic_delete("libnet/t/k", pair)
        await store.put("libnet/t/other", b"x")
        assert cluster.deliver_stale() == [False]
        assert b"libnet/t/k" not in cluster.data

    asyncio.run(main())


def test_a_stale_plain_put_cannot_undo_a_newer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        cluster = FakeCluster(["stale"])
        store = _store(cluster, monkeypatch, timeout=2.0)
        await store.put("libnet/t/k", b"old")
        await store.put("libnet/t/k", b"new")
        assert cluster.deliver_stale() == [False]
        assert cluster.data[b"libnet/t/k"][0] == b"new"

    asyncio.run(main())


def test_one_fence_per_store_and_a_lost_fence_is_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        cluster = FakeCluster([])
        store = _store(cluster, monkeypatch)
        await store.put("libnet/t/a", b"1")
        fences = [k for k in cluster.data if k.startswith(b"~libnet-fence/")]
        assert len(fences) == 1
        del cluster.data[fences[0]]  # its lease ended
        assert (await store.atomic_put("libnet/t/b", b"2", None)).value == b"2"
        assert await store.delete("libnet/t/a") is True
        assert await store.delete("libnet/t/a") is False

    asyncio.run(main())


def test_a_cancelled_write_waiting_in_a_stopped_member_cannot_undo_a_later_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A put is cancelled (its caller gave up, as cas_lock cancels its refresher)
    while its try waits in a stopped member; the store's next put lands; the member
    resumes.  Before: the old try's fence compare still held and it undid the newer put."""

    async def main() -> None:
        cluster = FakeCluster(["answer", "stale"])
        store = _store(cluster, monkeypatch, timeout=2.0)
        await store.put("libnet/t/other", b"x")  # the fence is made
        task = asyncio.create_task(store.put("libnet/t/k", b"old"))
        for _ in range(100):
            if cluster.stale:
                break
            await asyncio.sleep(0.01)
        assert cluster.stale
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.put("libnet/t/k", b"new")
        assert cluster.deliver_stale() == [False]
        assert cluster.data[b"libnet/t/k"][0] == b"new"

    asyncio.run(main())


def test_a_write_reported_unknown_cannot_land_after_a_later_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A put's first try waits in a stopped member, and no later try (nor the fence's
    raise) is answered before its deadlines: StoreOutcomeUnknown.  The cluster
    comes back; the store's next put lands; the member resumes.  Before: the
    old try applied after the newer put (the fence was never raised)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = FakeCluster(["answer", "stale"])
        store = _store(cluster, monkeypatch)
        await store.put("libnet/t/other", b"x")
        cluster.puts_hang = True
        cluster.answer_after = loop.time() + 3600
        with pytest.raises(StoreOutcomeUnknown):
            await store.put("libnet/t/k", b"old")
        cluster.answer_after = 0.0
        await store.put("libnet/t/k", b"new")
        assert cluster.deliver_stale() == [False]
        assert cluster.data[b"libnet/t/k"][0] == b"new"

    asyncio.run(main())


def test_a_write_that_may_stand_is_not_reported_unavailable_when_the_fence_keeps_moving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first try lands, its answer lost; every later try finds the fence moved
    (other writes of the store raising it).  Before: a plain StoreUnavailable
    ("kept moving") while the write stood."""

    async def main() -> None:
        cluster = FakeCluster(["answer", "lost"])
        store = _store(cluster, monkeypatch, timeout=2.0)
        await store.put("libnet/t/other", b"x")
        cluster.move_fences = 1000
        try:
            await store.put("libnet/t/k", b"mine")
        except StoreOutcomeUnknown:
            pass
        except StoreUnavailable as exc:
            assert cluster.data[b"libnet/t/k"][0] != b"mine", f"{exc!r} while the write stands"

    asyncio.run(main())
