"""Sandbox files libnet wrote itself are updated in place: no new file per join or leave."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

from libnet import Controller, sandbox_files
from libnet.errors import Conflict, Unavailable
from libnet.testing.fakes import FakeNamespaces
from tests.unit.conftest import fake_bridge_controller


@pytest.fixture
async def ctl(tmp_path):
    async with fake_bridge_controller("memory", tmp_path, "nameserver 198.51.100.53\nsearch example.org\n") as c:
        yield c


async def test_join_and_leave_rewrite_hosts_in_place(ctl: Controller, monkeypatch) -> None:
    await ctl.create_network("front")
    await ctl.create_network("side")
    sb = await ctl.create_sandbox(hostname="app")
    hosts = Path(ctl.config.state_dir) / "sandboxes" / sb.id / "hosts"
    made: list[str] = []
    real = sandbox_files.write_file
    monkeypatch.setattr(sandbox_files, "write_file", lambda d, n, t: made.append(n) or real(d, n, t))
    await ctl.connect("front", sb.id, name="app-front")
    await ctl.connect("side", sb.id, name="app-side")
    text = hosts.read_text()
    assert "app app-front" in text and "app app-side" in text
    await ctl.disconnect("side", sb.id)  # shorter text
    assert hosts.read_text() == sandbox_files.hosts_file("app", _entries(text, drop="app-side"))
    assert made == []  # no file renamed over: the file and its spare (made by the first) traded places


async def test_a_file_changed_behind_libnets_back_is_made_afresh(ctl: Controller) -> None:
    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    hosts = Path(ctl.config.state_dir) / "sandboxes" / sb.id / "hosts"
    os.unlink(hosts)
    os.symlink("/etc/passwd", hosts)  # not libnet's file any more: never written through
    await ctl.connect("front", sb.id, name="app-front")
    assert not hosts.is_symlink() and "app app-front" in hosts.read_text()


def _entries(text: str, drop: str) -> list[tuple[str, list[str]]]:
    out = []
    for line in text.splitlines()[7:]:
        ip, names = line.split("\t")
        kept = [n for n in names.split() if n != "app"]
        if drop not in kept:
            out.append((ip, kept))
    return out


def test_a_private_file_is_rewritten_in_place_and_cut(tmp_path) -> None:
    path = tmp_path / ".hosts.spare"
    path.write_text("127.0.0.1\tlocalhost\n198.51.100.7\tapp app-front\n")
    ino = path.stat().st_ino
    st = sandbox_files.rewrite_file(str(path), "127.0.0.1\tlocalhost\n")
    assert path.read_text() == "127.0.0.1\tlocalhost\n" and st.st_ino == ino and st.st_size == len(path.read_bytes())
    sandbox_files.rewrite_file(str(path), "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    assert path.read_text() == "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
    with pytest.raises(FileNotFoundError):
        sandbox_files.rewrite_file(str(tmp_path / "gone"), "x\n")


async def test_the_file_readers_see_is_never_written_to(ctl: Controller, monkeypatch) -> None:
    """Linux does not make a read atomic against a write of the same file: a resolver
    reading the hosts file while libnet wrote it in place saw a mix of texts, the new
    text cut at the old length or zeros (a few in 10^6 reads against a writer).  Every
    write now goes to a file no reader has open under the name: a reader sees old or new."""
    await ctl.create_network("front")
    await ctl.create_network("side")
    sb = await ctl.create_sandbox(hostname="app")
    directory = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    written_to_visible: list[str] = []
    real_pwrite, real_write, real_trunc = os.pwrite, os.write, os.ftruncate

    def check(fd: int) -> None:
        ino = os.fstat(fd).st_ino
        for name in ("hosts", "resolv.conf"):
            with contextlib.suppress(FileNotFoundError):
                if (directory / name).stat().st_ino == ino:
                    written_to_visible.append(name)

    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: check(fd) or real_pwrite(fd, data, off))
    monkeypatch.setattr(os, "write", lambda fd, data: check(fd) or real_write(fd, data))
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: check(fd) or real_trunc(fd, n))
    with open(directory / "hosts") as held:  # a reader that opened it before the change
        before = held.read()
        await ctl.connect("front", sb.id, name="app-front")
        held.seek(0)
        assert held.read() == before  # what it opened stays whole
    await ctl.connect("side", sb.id, name="app-side")
    await ctl.disconnect("side", sb.id)
    assert written_to_visible == []
    assert "app app-front" in (directory / "hosts").read_text()
    assert "app-side" not in (directory / "hosts").read_text()


async def test_a_spare_that_is_a_symlink_is_never_written_through(ctl: Controller, tmp_path) -> None:
    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    directory = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    spare = directory / ".hosts.spare"
    spare.unlink(missing_ok=True)
    spare.symlink_to(victim)
    await ctl.connect("front", sb.id, name="app-front")
    assert victim.read_text() == "keep me\n"
    assert "app app-front" in (directory / "hosts").read_text() and not (directory / "hosts").is_symlink()
    await ctl.disconnect("front", sb.id)
    assert victim.read_text() == "keep me\n" and "app-front" not in (directory / "hosts").read_text()


async def test_removing_the_sandbox_removes_its_directory_with_the_spares(ctl: Controller) -> None:
    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    await ctl.connect("front", sb.id, name="app-front")
    directory = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    assert directory.is_dir()
    await ctl.remove_sandbox(sb.id)
    assert not directory.exists()


async def test_a_symlink_in_the_place_of_the_sandbox_directory_is_never_written_through(
    ctl: Controller, tmp_path
) -> None:
    """Breaker: ``<state>/sandboxes/<id>`` planted as a symlink to another directory made `sandbox create`
    replace that directory's ``hosts`` and ``resolv.conf``; the sandbox is now refused, nothing written."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hosts").write_text("keep me\n")
    planted = Path(ctl.config.state_dir) / "sandboxes" / "planted"
    planted.parent.mkdir(exist_ok=True)
    planted.symlink_to(victim)
    with pytest.raises(Conflict, match="not a directory libnet made"):
        await ctl.create_sandbox("planted", hostname="app")
    assert sorted(os.listdir(victim)) == ["hosts"] and (victim / "hosts").read_text() == "keep me\n"
    assert planted.is_symlink()
    assert not await ctl.repo.has_sandbox("planted")  # refused: no record left behind
    sandbox_files.remove(ctl.config.state_dir, "planted")  # the inventory's purge: not followed either
    assert (victim / "hosts").read_text() == "keep me\n"


async def test_a_symlink_put_in_the_place_of_a_sandbox_directory_later_is_never_written_through(
    ctl: Controller, tmp_path
) -> None:
    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    directory = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hosts").write_text("keep me\n")
    os.rename(directory, tmp_path / "moved")
    directory.symlink_to(victim)
    with pytest.raises(Conflict, match="not a directory libnet made"):
        await ctl.connect("front", sb.id, name="app-front")
    assert sorted(os.listdir(victim)) == ["hosts"] and (victim / "hosts").read_text() == "keep me\n"


async def test_a_planted_temporary_file_is_never_written_through(ctl: Controller, tmp_path) -> None:
    """Breaker: the temporary file of a fresh write (``.hosts.tmp``) was opened with O_TRUNC and no
    O_NOFOLLOW: a symlink (or a hard link) of that name had its target truncated and overwritten."""
    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    directory = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    victim, linked = tmp_path / "victim", tmp_path / "linked"
    victim.write_text("keep me\n")
    linked.write_text("keep me too\n")
    (directory / ".hosts.tmp").symlink_to(victim)
    os.link(linked, directory / ".resolv.conf.tmp")
    with open(directory / "hosts", "a") as f:  # changed behind libnet's back: made afresh (write_file)
        f.write("# edited\n")
    with open(directory / "resolv.conf", "a") as f:
        f.write("# edited\n")
    await ctl.connect("front", sb.id, name="app-front")
    assert victim.read_text() == "keep me\n" and linked.read_text() == "keep me too\n"
    assert not (directory / "hosts").is_symlink() and "app app-front" in (directory / "hosts").read_text()
    assert "# edited" not in (directory / "resolv.conf").read_text()


async def test_a_sandbox_whose_files_cannot_be_written_is_refused_and_not_kept(ctl: Controller, monkeypatch) -> None:
    ns = ctl._namespaces
    assert isinstance(ns, FakeNamespaces)
    """Breaker: with a read-only (here: immutable) state dir `sandbox create` answered "internal error:
    [Errno 1]" and kept the sandbox's record, its namespace rolled back: a sandbox without a namespace."""

    def refuse(*_a: object) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sandbox_files.SandboxFiles, "_place_ready", lambda *_a: False)
    monkeypatch.setattr(sandbox_files, "write_file", refuse)
    with pytest.raises(Unavailable, match=r"cannot be written.*Read-only file system"):
        await ctl.create_sandbox("ro1", hostname="app")
    assert not await ctl.repo.has_sandbox("ro1")
    assert not [p for p in ns.paths if p.endswith("ro1")]
