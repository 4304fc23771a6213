"""Sandbox files libnet wrote itself are updated in place: no new file per join or leave."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller, sandbox_files
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


@pytest.fixture
async def ctl(tmp_path):
    store = MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\nsearch example.org\n")
    await c.start()
    yield c
    await c.close()


async def test_join_and_leave_rewrite_hosts_in_place(ctl: Controller, monkeypatch) -> None:
    await ctl.create_network("front")
    await ctl.create_network("side")
    sb = await ctl.create_sandbox(hostname="app")
    hosts = Path(ctl.config.state_dir) / "sandboxes" / sb.id / "hosts"
    ino = hosts.stat().st_ino
    made: list[str] = []
    real = sandbox_files.write_file
    monkeypatch.setattr(sandbox_files, "write_file", lambda d, n, t: made.append(n) or real(d, n, t))
    await ctl.connect("front", sb.id, name="app-front")
    await ctl.connect("side", sb.id, name="app-side")
    text = hosts.read_text()
    assert "app app-front" in text and "app app-side" in text
    await ctl.disconnect("side", sb.id)  # shorter text
    assert hosts.read_text() == sandbox_files.hosts_file("app", _entries(text, drop="app-side"))
    assert hosts.stat().st_ino == ino and made == []  # the same file all along: nothing made


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


def test_a_shorter_text_is_padded_with_a_comment_until_the_file_is_cut(tmp_path, monkeypatch) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1\tlocalhost\n198.51.100.7\tapp app-front\n")
    ino = path.stat().st_ino
    seen: list[bytes] = []
    real = os.ftruncate

    def cut(fd: int, length: int) -> None:
        seen.append(path.read_bytes())  # what a reader sees before the cut
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", cut)
    st = sandbox_files.rewrite_file(str(path), "127.0.0.1\tlocalhost\n")
    assert path.read_text() == "127.0.0.1\tlocalhost\n" and st.st_ino == ino and st.st_size == len(path.read_bytes())
    (before,) = seen
    lines = before.decode().splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost" and lines[1].startswith("#") and len(lines) == 2
    sandbox_files.rewrite_file(str(path), "127.0.0.1\tlocalhost\n::1\tlocalhost\n")  # longer: no cut
    assert path.read_text() == "127.0.0.1\tlocalhost\n::1\tlocalhost\n" and len(seen) == 1
    with pytest.raises(FileNotFoundError):
        sandbox_files.rewrite_file(str(tmp_path / "gone"), "x\n")
