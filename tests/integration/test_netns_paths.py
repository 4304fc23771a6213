"""Names and namespace paths through a real agent (issue 14, fault 8): a path
given as a container's namespace must be a network namespace that is not the
host's, and sandbox ids that agree in their first 12 characters get their own
namespaces and endpoints."""

from __future__ import annotations

import os

import pytest

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def test_netns_paths_must_be_container_network_namespaces(bed: Testbed, tmp_path) -> None:
    host = bed.hosts[0]
    agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
    plain = tmp_path / "plain"
    plain.write_text("not a namespace\n")
    container = bed.namespace("c1")  # removed with the test bed
    try:
        refused = [
            (str(plain), "plain file"),
            (str(tmp_path), "directory"),
            ("/dev/null", "not a network namespace"),
            ("/proc/self/ns/mnt", "mount namespace"),
            (str(tmp_path / "missing"), "does not exist"),
            (f"/var/run/netns/{host.ns}", "host's own network namespace"),  # where the agent runs
            (f"/proc/{os.getpid()}/ns/net", "host's own"),  # the machine's (the tests run there)
            ("/proc/1/ns/net", "/proc/1/ns/net"),  # the machine's too, or unreadable here: refused either way
        ]
        for path, why in refused:
            r = agent.cli("sandbox", "create", "--netns", path)
            assert r.returncode == 1 and why in r.stderr and path in r.stderr, (path, r.stderr)
        assert agent.cli_json("sandbox", "ls") == []
        assert not os.path.exists(tmp_path / "h1" / "sandboxes") or os.listdir(tmp_path / "h1" / "sandboxes") == []

        r = agent.cli("sandbox", "create", "--id", "ext", "--netns", f"/var/run/netns/{container}")
        assert r.returncode == 0, r.stderr
        r = agent.cli("sandbox", "create", "--id", "ext2", "--netns", f"/run/netns/{container}")  # the same one
        assert r.returncode == 1 and "sandbox ext" in r.stderr, r.stderr
        assert agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25").returncode == 0
        r = agent.cli("connect", "front", "ext")
        assert r.returncode == 0, r.stderr
        addrs = bed.run(container, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert "198.51.100." in addrs
    finally:
        agent.stop()


def test_sandbox_ids_alike_in_their_first_12_characters(bed: Testbed, tmp_path) -> None:
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    ids = ["0123456789ab" + "c" * 52, "0123456789ab" + "d" * 52, "k8s_pod-0123456789", "K8S_POD-0123456789"]
    try:
        for sid in ids:
            r = agent.cli("sandbox", "create", "--id", sid)
            assert r.returncode == 0 and r.stdout.strip() == sid, r.stderr
        sbs = {s["id"]: s for s in agent.cli_json("sandbox", "ls")}
        assert set(sbs) == set(ids) and len({s["netns"] for s in sbs.values()}) == len(ids)
        assert agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25").returncode == 0
        for sid in ids:  # default endpoint names differ too (they are case-insensitive DNS names)
            r = agent.cli("connect", "front", sid)
            assert r.returncode == 0, r.stderr
        addresses = set()
        for sid in ids:
            ns = os.path.basename(sbs[sid]["netns"])
            out = bed.run(ns, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
            addresses.add(out.split()[3])
        assert len(addresses) == len(ids)
        assert agent.cli("sandbox", "rm", ids[0]).returncode == 0
        assert all(os.path.exists(sbs[sid]["netns"]) for sid in ids[1:])
        r = agent.cli("sandbox", "create", "--id", "../../etc")
        assert r.returncode == 1 and "letter or digit" in r.stderr, r.stderr
    finally:
        agent.stop()


def test_the_agents_own_namespace_is_refused_whatever_thread_looks(bed: Testbed, tmp_path) -> None:
    """Breaker (issue 22 follow-up of the Docker hand-over fault): ``/proc/self/ns/net`` names the
    namespace the process's *main* thread is in at the moment of the look, and the event loop's
    thread steps into sandboxes for a moment to make sockets there.  The agent's own namespace is
    taken when the check is made; here the checker lives in test host h1 while the main thread
    stays elsewhere, and h1's path is refused as the host's own (before: accepted as a sandbox)."""
    from libnet.errors import NotANamespace
    from libnet.kernel.netns import NamespaceThread
    from libnet.kernel_namespaces import KernelNamespaces

    home = bed.hosts[0].ns
    th = NamespaceThread(home)
    try:
        checker = th.call(KernelNamespaces, str(tmp_path), "0123456789ab", None)
        with pytest.raises(NotANamespace, match="host's own"):
            th.call(checker.check_external, f"/run/netns/{home}", {})
        other = f"/run/netns/{bed.namespace('c1')}"
        th.call(checker.check_external, other, {})  # a container's namespace is fine
    finally:
        th.close()
