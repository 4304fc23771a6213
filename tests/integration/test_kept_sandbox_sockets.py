"""Sandbox rtnetlink sockets kept open between operations (issue 22: a connect and its disconnect
each opened one, a dozen system calls apiece): lent again only while the path still shows the
namespace they were made in, one user at a time, and closed once unused for a while."""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest

from libnet import Config, Controller
from libnet.errors import NoSuchNamespace
from libnet.kernel import netns
from libnet.kernel.host import KeptSandboxes
from libnet.testing.hosts import Testbed
from libnet.testing.pools import ipam_config

#: sock_ioctl(2)-level: a descriptor of the network namespace a socket was made in
SIOCGSKNS = 0x894C

pytestmark = pytest.mark.root


def sockets_in_namespace(path: str) -> int:
    """How many sockets of this process were made in the namespace at ``path`` (and hold it)."""
    ident, held = netns.identity(path), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            ns_fd = fcntl.ioctl(int(fd), SIOCGSKNS)
        except OSError:  # gone meanwhile, or not a socket of a network family
            continue
        try:
            st = os.fstat(ns_fd)
        finally:
            os.close(ns_fd)
        held += (st.st_dev, st.st_ino) == ident
    return held


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


async def test_a_socket_given_back_is_lent_again_and_works(bed: Testbed) -> None:
    path = f"/run/netns/{bed.namespace('k1')}"
    kept = KeptSandboxes(idle=30)
    try:
        first = await kept.open(path)
        sock = first.socket
        assert first.link_index("lo") == 1
        first.close()
        first.close()  # a second close of a spent handle changes nothing
        second = await kept.open(path)
        assert second.socket is sock and second.link_index("lo") == 1
        other = await kept.open(path)  # lent already: a socket of its own
        assert other.socket is not sock
        spare = other.socket
        other.close()  # kept
        second.close()  # one of that namespace is kept already: this one is closed
        assert sock.sock.fileno() == -1 and spare.sock.fileno() != -1
    finally:
        kept.close()


async def test_a_namespace_made_again_at_the_same_path_gets_a_new_socket(bed: Testbed) -> None:
    name = bed.namespace("k2")
    path = f"/run/netns/{name}"
    kept = KeptSandboxes(idle=30)
    try:
        links = await kept.open(path)
        old = links.socket
        links.close()
        netns.delete(name)
        with pytest.raises(NoSuchNamespace):
            await kept.open(path)
        assert old.sock.fileno() == -1  # not lent for a namespace that is gone
        netns.create(name)  # another namespace at the same path
        links = await kept.open(path)
        assert links.socket is not old and links.ident == netns.identity(path)
        links.close()
    finally:
        kept.close()


async def test_unused_sockets_are_closed_after_a_while(bed: Testbed) -> None:
    paths = [f"/run/netns/{bed.namespace(f'k3{i}')}" for i in range(3)]
    kept = KeptSandboxes(keep=2, idle=0.1)
    try:
        handles = [await kept.open(p) for p in paths]
        socks = [h.socket for h in handles]
        for h in handles:
            h.close()  # from the host thread in real use: any thread
        assert [s.sock.fileno() == -1 for s in socks] == [False, False, True]  # two kept at most
        for _ in range(50):
            if all(s.sock.fileno() == -1 for s in socks):
                break
            await asyncio.sleep(0.05)
        assert all(s.sock.fileno() == -1 for s in socks)  # namespaces no longer held by libnet
    finally:
        kept.close()


async def test_a_socket_given_back_from_another_thread_is_swept_too(bed: Testbed) -> None:
    path = f"/run/netns/{bed.namespace('k4')}"
    kept = KeptSandboxes(idle=0.1)
    try:
        links = await kept.open(path)
        sock = links.socket
        await asyncio.sleep(0.2)  # the sweep planned at the open ran (nothing to close then)
        await asyncio.to_thread(links.close)
        for _ in range(50):
            if sock.sock.fileno() == -1:
                break
            await asyncio.sleep(0.05)
        assert sock.sock.fileno() == -1
    finally:
        kept.close()


async def test_a_closed_controller_holds_no_sandbox_namespace(bed: Testbed, tmp_path) -> None:
    """Controller.close releases the kept sockets: a closed controller (an engine that stopped
    it, a SyncController closed with its loop) does not hold its sandboxes' namespaces alive."""
    path = f"/run/netns/{bed.namespace('k5')}"
    config = Config(
        store=f"sqlite://{tmp_path}/store.db",
        state_dir=str(tmp_path),
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=bed.prefix + "sb-",
        ipam=ipam_config(),
    )
    ctl = Controller(config)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24")
        sb = await ctl.create_sandbox(netns=path)
        await ctl.connect("web", sb.id)
        await ctl.disconnect("web", sb.id)
        await ctl.delete_sandbox(sb.id)
        assert sockets_in_namespace(path) == 1  # kept for the next operation there
    finally:
        await ctl.close()
    assert sockets_in_namespace(path) == 0


def test_a_socket_given_back_under_another_event_loop_is_swept_there(bed: Testbed) -> None:
    """A keeper used under one event loop, then under another (the first closed with its
    sweep still planned: asyncio.run, a SyncController closed): the second loop sweeps."""
    path = f"/run/netns/{bed.namespace('k6')}"
    kept = KeptSandboxes(idle=0.1)

    async def use() -> None:
        (await kept.open(path)).close()
        await asyncio.sleep(0)  # the sweep planned, not run

    async def wait_swept() -> bool:
        await use()
        for _ in range(50):
            if sockets_in_namespace(path) == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        asyncio.run(use())
        assert asyncio.run(wait_swept())
    finally:
        kept.close()
