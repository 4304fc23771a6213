"""What a kill -9 left between an operation's store step and the next step, finished by the
next reconcile: a new sandbox's files (its record stored, its directory not made yet) and the
gateway bridge policy of a connect or disconnect (a sandbox on an overlay without its way out,
or keeping its gateway bridge leg after it left the overlay)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from libnet import Config, Controller
from libnet.driverapi import Capabilities
from libnet.gateway import GATEWAY_BRIDGE, endpoint_name
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (the rollbacks stop at it too)."""


async def _dies(*_args: Any, **_kwargs: Any) -> Any:
    raise Killed("kill -9")


def _dies_now(*_args: Any, **_kwargs: Any) -> Any:
    raise Killed("kill -9")


class NoWayOut(FakeDriver):
    """An overlay-like driver: its networks get their way out from the gateway bridge."""

    def capabilities(self) -> Capabilities:
        return Capabilities(scope=self.scope, external_via_gateway_bridge=True)  # type: ignore[arg-type]


class Bridge(FakeDriver):
    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return dict(options)  # the gateway bridge's bridge_name


def _controller(
    tmp_path: Path, store: Any, name: str = "h1", namespaces: Any = None, drivers: Any = None
) -> Controller:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    return Controller(
        Config(state_dir=str(state), resolv_conf=str(tmp_path / "resolv.conf"), node_name=name),
        store=store,
        drivers=drivers or {"bridge": Bridge("bridge"), "ov": NoWayOut("ov")},
        namespaces=namespaces or FakeNamespaces(),
    )


async def _restart(tmp_path: Path, old: Controller) -> Controller:
    """The same host after a kill -9: same state dir (instance), store, kernel (fakes); the old
    controller is dropped, not closed (nothing of it runs any more)."""
    new = _controller(tmp_path, old._store, old.config.node_name, old._namespaces, old._drivers)
    await new.start()
    assert new.instance == old.instance
    return new


def _dir(ctl: Controller, sandbox_id: str) -> Path:
    return Path(ctl.config.state_dir) / "sandboxes" / sandbox_id


@pytest.fixture(autouse=True)
def _resolv(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\nsearch example.test\n")


async def _create_killed_before_files(ctl: Controller, sid: str, **kwargs: Any) -> None:
    """create_sandbox killed between its store step and its first file write."""
    files = ctl._files
    write, remove = files.write, files.remove
    files.write = _dies  # type: ignore[method-assign]
    files.remove = _dies_now  # type: ignore[assignment,method-assign]  # the rollback's first step: killed there too
    try:
        with pytest.raises(Killed):
            await ctl.create_sandbox(sid, **kwargs)
    finally:
        files.write, files.remove = write, remove  # type: ignore[method-assign]


# --- a new sandbox's files ---------------------------------------------------------------


async def test_a_kill_between_a_sandbox_record_and_its_files_is_repaired(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    made = await ctl.create_sandbox("a" * 12, hostname="a")  # the files a finished create writes
    want = {n: (_dir(ctl, made.id) / n).read_text() for n in ("resolv.conf", "hosts")}
    await _create_killed_before_files(ctl, "b" * 12, hostname="a")
    assert (await ctl.sandbox("b" * 12)).files and not _dir(ctl, "b" * 12).exists()

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any("b" * 12 in line and "written" in line for line in report.repaired), report
    assert not any("a" * 12 in line for line in report.repaired + report.missing), report
    assert {n: (_dir(again, "b" * 12) / n).read_text() for n in want} == want
    inode = (_dir(again, "b" * 12) / "hosts").stat().st_ino
    # nothing to do the next time, nor after another restart; the files are kept as they are
    for ctl2 in (again, await _restart(tmp_path, again)):
        report = await ctl2.reconcile()
        assert not report.repaired and not report.missing, report
    assert (_dir(again, "b" * 12) / "hosts").stat().st_ino == inode
    await again.create_network("front", "bridge", ipv4_subnet="198.51.100.0/26", ipv6=False)
    await again.connect("front", "b" * 12)  # and the sandbox works
    assert "198.51.100.2\ta" in (_dir(again, "b" * 12) / "hosts").read_text()


async def test_reconcile_makes_no_files_for_another_instances_sandbox_without_them(tmp_path: Path) -> None:
    """Two instances on one store: the other's sandbox whose create was killed before its files
    is not this instance's to repair (its directory would be under the other's state dir)."""
    store = MemoryStore()
    mine, theirs = _controller(tmp_path, store, "h1"), _controller(tmp_path, store, "h2")
    await mine.start()
    await theirs.start()
    await _create_killed_before_files(theirs, "c" * 12)
    report = await mine.reconcile()  # (its namespace is on the other host: said missing here)
    assert not report.repaired and not any("files" in line for line in report.missing), report
    assert not _dir(mine, "c" * 12).exists() and not _dir(theirs, "c" * 12).exists()
    report = await (await _restart(tmp_path, theirs)).reconcile()
    assert any("written" in line for line in report.repaired), report
    assert (_dir(theirs, "c" * 12) / "hosts").is_file() and not _dir(mine, "c" * 12).exists()


async def test_reconcile_writes_no_files_of_a_sandbox_created_without_them(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await _create_killed_before_files(ctl, "d" * 12, files=False)
    report = await (await _restart(tmp_path, ctl)).reconcile()
    assert not report.repaired and not report.missing, report
    assert not _dir(ctl, "d" * 12).exists()


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "fifo", "file"])
async def test_something_foreign_in_a_sandbox_directorys_place_is_reported_not_touched(
    tmp_path: Path, kind: str
) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    sid = "e" * 12
    await _create_killed_before_files(ctl, sid)
    place = _dir(ctl, sid)
    place.parent.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "symlink":
        place.symlink_to(elsewhere)
    elif kind == "dangling-symlink":
        place.symlink_to(tmp_path / "nothing")
    elif kind == "fifo":
        os.mkfifo(place)
    else:
        place.write_text("someone's\n")
    before = os.lstat(place)
    again = await _restart(tmp_path, ctl)
    for _ in range(2):
        report = await asyncio.wait_for(again.reconcile(), 10)  # a FIFO opened for reading would block
        assert not report.repaired, report
        assert any(sid in line and str(place) in line for line in report.missing), report
    after = os.lstat(place)
    assert (after.st_ino, stat.S_IFMT(after.st_mode), after.st_mtime_ns) == (
        before.st_ino,
        stat.S_IFMT(before.st_mode),
        before.st_mtime_ns,
    )
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "nothing").exists()
    if kind == "file":
        assert place.read_text() == "someone's\n"
    # removed by hand, the next reconcile makes the files
    place.unlink()
    report = await again.reconcile()
    assert any("written" in line for line in report.repaired), report
    assert (place / "resolv.conf").is_file()


# --- the gateway bridge of a connect or disconnect -----------------------------------------


def _gateway_legs(eps: list[Any], sandbox_id: str) -> list[Any]:
    return [e for e in eps if e.name == endpoint_name(sandbox_id)]


async def _overlay_setup(tmp_path: Path) -> tuple[Controller, list[str]]:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("ov", "ov", ipv4_subnet="198.51.100.0/26", ipv6=False)
    await ctl.create_network("ov2", "ov", ipv4_subnet="198.51.100.64/26", ipv6=False)
    sids = [(await ctl.create_sandbox(c * 12, hostname=f"h{c}")).id for c in "fg"]
    return ctl, sids


async def _assert_gateway_state(ctl: Controller, sid: str, want_leg: bool) -> None:
    sb = await ctl.sandbox(sid)
    eps = [await ctl.endpoint(e) for e in sb.endpoints]
    legs = _gateway_legs(eps, sid)
    assert len(legs) == (1 if want_leg else 0), eps
    everywhere = _gateway_legs(await ctl.endpoints(), sid)
    assert [e.id for e in everywhere] == [e.id for e in legs], everywhere  # no stray leg left unjoined
    if want_leg:
        assert legs[0].gateway and sum(e.gateway for e in eps) == 1, eps
        assert ctl.driver("bridge").gateways.get(legs[0].id) is True


@pytest.mark.parametrize("where", ["before the sync", "after the leg's record"])
async def test_a_kill_between_a_connect_and_its_gateway_bridge_is_repaired(tmp_path: Path, where: str) -> None:
    ctl, (sid, other) = await _overlay_setup(tmp_path)
    await ctl.connect("ov", other)  # another sandbox, whole: nothing to repair there
    if where == "before the sync":
        ctl._gateway.need = _dies  # type: ignore[method-assign]
    else:  # the gateway bridge leg's endpoint is stored (connecting), its join is killed
        first = ctl._joins.join
        calls = []

        async def join(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == 2:
                raise Killed("join of the gateway bridge leg")
            return await first(*args, **kwargs)

        ctl._joins.join = join  # type: ignore[method-assign]
    ctl.leave = _dies  # type: ignore[method-assign]  # connect's undo: killed, so never run
    with pytest.raises(Killed):
        await ctl.connect("ov", sid)
    sb = await ctl.sandbox(sid)
    assert len(sb.endpoints) == 1 and not _gateway_legs(await ctl.endpoints(), sid)[1:]

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any(sid[:12] in line and "gateway bridge" in line for line in report.repaired), report
    await _assert_gateway_state(again, sid, True)
    await _assert_gateway_state(again, other, True)
    assert not any(other[:12] in line for line in report.repaired), report
    for ctl2 in (again, await _restart(tmp_path, again)):  # nothing left to do
        report = await ctl2.reconcile()
        assert not report.repaired and not report.missing, report
    await again.disconnect("ov", sid)  # and the sandbox works: the leg goes with the overlay
    await _assert_gateway_state(again, sid, False)


async def test_a_kill_between_a_disconnect_and_its_gateway_bridge_is_repaired(tmp_path: Path) -> None:
    ctl, (sid, other) = await _overlay_setup(tmp_path)
    for s in (sid, other):
        await ctl.connect("ov", s)
    await ctl.connect("ov2", other)
    await _assert_gateway_state(ctl, sid, True)
    ctl._sync_gateway_bridge = _dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await ctl.disconnect("ov", sid)
    with pytest.raises(Killed):
        await ctl.disconnect("ov", other)  # still on ov2: keeps its leg anyway
    assert len((await ctl.sandbox(sid)).endpoints) == 1  # the gateway bridge leg alone

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any(sid[:12] in line and "gateway bridge" in line for line in report.repaired), report
    assert not any(other[:12] in line for line in report.repaired), report
    await _assert_gateway_state(again, sid, False)
    assert (await again.sandbox(sid)).endpoints == []
    await _assert_gateway_state(again, other, True)
    for ctl2 in (again, await _restart(tmp_path, again)):
        report = await ctl2.reconcile()
        assert not report.repaired and not report.missing, report
    await again.connect("ov", sid)
    await _assert_gateway_state(again, sid, True)


async def test_reconcile_leaves_another_instances_gateway_bridge_alone(tmp_path: Path) -> None:
    store = MemoryStore()
    theirs = _controller(tmp_path, store, "h2")
    await theirs.start()
    await theirs.create_network("ov", "ov", ipv4_subnet="198.51.100.0/26", ipv6=False)
    sid = (await theirs.create_sandbox("h" * 12)).id
    theirs._gateway.need = _dies  # type: ignore[method-assign]
    theirs.leave = _dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await theirs.connect("ov", sid)
    mine = _controller(tmp_path, store, "h1")
    await mine.start()
    report = await mine.reconcile()
    assert not any("gateway" in line for line in report.repaired + report.missing), report
    assert len((await mine.sandbox(sid)).endpoints) == 1
    assert await mine.repo.network_named(GATEWAY_BRIDGE) is None


async def test_no_gateway_bridge_repair_in_a_namespace_that_is_gone(tmp_path: Path) -> None:
    """A sandbox left without its leg whose namespace is gone since: said once as gone, no join tried."""
    ctl, (sid, _) = await _overlay_setup(tmp_path)
    ctl._gateway.need = _dies  # type: ignore[method-assign]
    ctl.leave = _dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await ctl.connect("ov", sid)
    again = await _restart(tmp_path, ctl)
    again._namespaces.paths.discard((await again.sandbox(sid)).netns)  # type: ignore[attr-defined]
    for _ in range(2):
        report = await again.reconcile()
        assert not report.repaired and [line for line in report.missing if sid[:12] in line] == [
            f"sandbox {sid[:12]}: namespace {(await again.sandbox(sid)).netns} is gone"
        ], report
