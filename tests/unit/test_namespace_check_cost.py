"""create_sandbox's check of a container's namespace path costs a stat per candidate, not per sandbox."""

from __future__ import annotations

import os

import pytest

from libnet.errors import Conflict
from libnet.kernel import netns
from libnet.kernel_namespaces import KernelNamespaces

IDS = {f"/run/netns/c{i}": (4, 0xF0001000 + i) for i in range(100)}


@pytest.fixture
def stats(monkeypatch) -> list[str]:
    made: list[str] = []

    def identity(path: str) -> tuple[int, int] | None:
        made.append(path)
        return IDS.get(path)

    monkeypatch.setattr(netns, "identity", identity)
    monkeypatch.setattr(netns, "check_path", lambda path: IDS[path])
    return made


def test_other_sandboxes_namespaces_are_stat_once(tmp_path, stats, monkeypatch) -> None:
    ns = KernelNamespaces(str(tmp_path), "0123456789ab")
    ns.check_external("/run/netns/c99", {})
    # the machine's mount table stays as it is (other processes' mounts would make every call stat again)
    monkeypatch.setattr(ns._mounts, "changed", lambda: False)
    sandboxes = {f"s{i}": f"/run/netns/c{i}" for i in range(99)}
    ns.check_external("/run/netns/c99", sandboxes)
    first = len([p for p in stats if p in IDS])
    stats.clear()
    ns.check_external("/run/netns/c99", sandboxes)
    assert first == 99 and [p for p in stats if p in IDS] == []
    with pytest.raises(Conflict) as exc:  # a sandbox's namespace by another path: still found
        IDS["/proc/4242/ns/net"] = IDS["/run/netns/c7"]
        ns.check_external("/proc/4242/ns/net", sandboxes)
    assert exc.value.ids["holder"] == "s7"
    with pytest.raises(Conflict):  # the very path of a sandbox
        ns.check_external("/run/netns/c3", sandboxes)


def test_after_a_mount_or_unmount_the_paths_are_stat_again(tmp_path, stats, monkeypatch) -> None:
    ns = KernelNamespaces(str(tmp_path), "0123456789ab")
    sandboxes = {"s1": "/run/netns/c1", "s2": "/proc/77/ns/net"}
    IDS["/proc/77/ns/net"] = IDS["/run/netns/c5"]
    ns.check_external("/run/netns/c2", sandboxes)
    stats.clear()
    ns.check_external("/run/netns/c2", sandboxes)
    assert stats.count("/proc/77/ns/net") == 1 and "/run/netns/c1" not in stats  # /proc paths: every time
    # c1 rebound (a mount) to the namespace asked for now: found, as s1's path shows it
    IDS["/run/netns/c1"], saved = IDS["/run/netns/c2"], IDS["/run/netns/c1"]
    monkeypatch.setattr(ns._mounts, "changed", lambda: True)
    try:
        with pytest.raises(Conflict) as exc:
            ns.check_external("/run/netns/c2", sandboxes)
        assert exc.value.ids["holder"] == "s1"
    finally:
        IDS["/run/netns/c1"] = saved


def test_a_sandbox_path_that_is_a_symlink_is_followed_every_time(tmp_path, monkeypatch) -> None:
    """A sandbox given as a symlink to its namespace file (README: symlinks are followed),
    the link then pointed at another namespace -- no mount or unmount, so the cache of
    identities was kept: a new sandbox for that other namespace was not refused."""
    files = {n: tmp_path / n for n in ("a", "b", "c")}
    for f in files.values():
        f.write_text("")
    link = tmp_path / "link"
    link.symlink_to(files["a"])

    def ident(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    monkeypatch.setattr(netns, "check_path", ident)
    monkeypatch.setattr(netns, "is_initial", lambda ident: False)  # plain files stand for namespaces
    ns = KernelNamespaces(str(tmp_path / "state"), "0123456789ab")
    sandboxes = {"s1": str(link), "s2": str(files["c"])}
    ns.check_external(str(files["b"]), sandboxes)
    monkeypatch.setattr(ns._mounts, "changed", lambda: False)  # nothing mounted meanwhile
    ns.check_external(str(files["b"]), sandboxes)
    link.unlink()
    link.symlink_to(files["b"])
    with pytest.raises(Conflict) as exc:
        ns.check_external(str(files["b"]), sandboxes)
    assert exc.value.ids["holder"] == "s1"
