"""Sandbox rtnetlink sockets kept open between operations (issue 22: a connect and its disconnect
each opened one, a dozen system calls apiece): lent again only while the path still shows the
namespace they were made in, one user at a time, and closed once unused for a while."""

from __future__ import annotations

import asyncio

import pytest

from libnet.errors import NoSuchNamespace
from libnet.kernel import netns
from libnet.kernel.host import KeptSandboxes
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


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
