"""User-supplied names and ids map to kernel names, files and keys without
collisions, and a path given as a network namespace must be one (issue 14, fault 8)."""

from __future__ import annotations

import os

import pytest

from libnet import Controller, sandbox_files
from libnet.drivers.bridge import BridgeDriver
from libnet.errors import BadRequest, Conflict, InvalidName, InvalidOption
from libnet.kernel import netns
from libnet.kernel_namespaces import KernelNamespaces

# --- netns paths: checked in the kernel layer -------------------------------------------------
from tests.unit.conftest import fake_bridge_controller


def _bad_paths(tmp_path) -> list[tuple[str, str]]:
    plain = tmp_path / "plain"
    plain.write_text("not a namespace\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block: it must be refused without hanging
    link = tmp_path / "link-to-plain"
    link.symlink_to(plain)
    return [
        (str(plain), "not a network namespace"),
        (str(link), "not a network namespace"),
        (str(tmp_path), "is a directory, not a network namespace"),
        (str(fifo), "not a network namespace"),
        ("/dev/null", "not a network namespace"),
        ("/proc/self/ns/mnt", "a mount namespace"),
        ("/proc/self/ns/uts", "a uts namespace"),
        (str(tmp_path / "missing"), "does not exist"),
        ("relative/path", "absolute"),
        ("", "absolute"),
        ("/run/netns/a\x00b", "NUL"),
        ("/" + "x" * 5000, "too long"),
        (str(plain) + "/below", "not a directory"),
    ]


def test_only_network_namespaces_pass_the_path_check(tmp_path) -> None:
    for path, why in _bad_paths(tmp_path):
        with pytest.raises(BadRequest) as exc:
            netns.check_path(path)
        assert why in exc.value.message, (path, exc.value.message)
        assert exc.value.ids["netns"] == path
    dev, ino = netns.check_path("/proc/self/ns/net")  # a magic link: followed
    st = os.stat("/proc/self/ns/net")
    assert (dev, ino) == (st.st_dev, st.st_ino)
    assert netns.check_path(f"/proc/{os.getpid()}/task/{os.getpid()}/ns/net") == (dev, ino)


def test_the_host_namespace_is_no_container_namespace(tmp_path) -> None:
    ns = KernelNamespaces(str(tmp_path), "0123456789ab")
    for host in ("/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net", "/proc/thread-self/ns/net"):
        with pytest.raises(BadRequest, match="host's own") as exc:
            ns.check_external(host, {})
        assert exc.value.ids["netns"] == host
    for path, why in _bad_paths(tmp_path):
        with pytest.raises(BadRequest, match=why):
            ns.check_external(path, {})


def test_the_machine_root_namespace_is_refused_too(tmp_path) -> None:
    # the agent may run in a namespace of its own (a test host): the machine's root namespace
    # (/proc/1/ns/net) and the configured host namespace are refused as well
    ns = KernelNamespaces(str(tmp_path), "0123456789ab", host_netns="h1")
    assert {"/proc/self/ns/net", "/proc/1/ns/net", "/run/netns/h1"} <= set(ns.host_paths())
    # and wherever /proc/1 cannot be read: the initial namespace has a fixed inode number
    assert netns.is_initial((4, 0xEFFFFFF9)) and not netns.is_initial((4, 0xF0000098))


# --- ids at the boundary and what is derived from them ------------------------------------------


@pytest.fixture
async def ctl(tmp_path):
    async with fake_bridge_controller("memory", tmp_path, state="state") as c:
        yield c


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", "../../etc", "a/b", "a\nb", "a\x00b", "-a", ".hidden", "_a", "a b", "a:b", "é", "a" * 129, 5],
)
async def test_sandbox_ids_outside_the_rule_are_refused(ctl: Controller, bad) -> None:
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    with pytest.raises(InvalidName, match=r"letter or digit.*\[A-Za-z0-9_.-\]"):
        await ctl.create_sandbox(bad)
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before
    assert not os.path.exists(os.path.join(ctl.config.state_dir, "sandboxes"))
    assert ctl._namespaces.paths == set()


async def test_sandbox_ids_sharing_a_prefix_or_differing_in_case_get_their_own_namespaces(ctl: Controller) -> None:
    # Docker ids are 64 hex digits; CNI/Kubernetes ids are free-form: the first 12 characters are no key
    ids = [
        "0123456789ab" + "c" * 52,
        "0123456789ab" + "d" * 52,
        "k8s_pod-0123456789",
        "k8s_pod-0123456789-b",
        "K8S_POD-0123456789",
        "abc",
        "abcd",
        "a" * 128,
    ]
    sbs = [await ctl.create_sandbox(i) for i in ids]
    assert len({sb.netns for sb in sbs}) == len(ids)
    assert {sb.id for sb in await ctl.sandboxes()} == set(ids)
    dirs = [d for d in os.listdir(os.path.join(ctl.config.state_dir, "sandboxes")) if not d.startswith(".")]
    assert sorted(dirs) == sorted(ids)  # besides .pool/.trash (libnet.sandbox_dirs)
    for sb in sbs:  # each owns its namespace; deleting one leaves the others
        assert ctl._namespaces.owners[sb.netns] == sb.id
    await ctl.delete_sandbox(ids[0])
    assert all(ctl._namespaces.exists(sb.netns) for sb in sbs[1:])
    assert (await ctl.sandbox("abc")).id == "abc"  # an id that is a prefix of another still names itself


async def test_default_endpoint_names_of_similar_sandbox_ids_differ(ctl: Controller) -> None:
    await ctl.create_network("web")
    ids = ["0123456789ab" + "c" * 52, "0123456789ab" + "d" * 52, "k8s_pod.x", "K8S_POD.X", "web1"]
    for i in ids:
        await ctl.create_sandbox(i)
    eps = [await ctl.connect("web", i) for i in ids]
    names = [ep.name for ep in eps]
    assert len({n.lower() for n in names}) == len(ids), names
    assert names[-1] == "ep-web1"  # a short lowercase id is used as it is
    assert all(n.startswith("ep-0123456789ab-") for n in names[:2])


async def test_the_same_namespace_cannot_hold_two_sandboxes(ctl: Controller) -> None:
    path = "/run/netns/someone-elses"
    ctl._namespaces.paths.add(path)
    first = await ctl.create_sandbox("first", netns=path)
    with pytest.raises(Conflict, match="first") as exc:
        await ctl.create_sandbox("second", netns=path)
    assert exc.value.ids["holder"] == first.id
    own = await ctl.create_sandbox("own")
    with pytest.raises(Conflict, match="own"):
        await ctl.create_sandbox("third", netns=own.netns)
    with pytest.raises(BadRequest, match="host's own"):
        await ctl.create_sandbox("fourth", netns="/proc/self/ns/net")
    assert {sb.id for sb in await ctl.sandboxes()} == {"first", "own"}


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "", "a\x00b", "a\nb"])
def test_sandbox_files_stay_in_their_directory(tmp_path, bad) -> None:
    with pytest.raises(BadRequest):
        sandbox_files.write(str(tmp_path / "state"), bad, "", "")
    with pytest.raises(BadRequest):
        sandbox_files.remove(str(tmp_path / "state"), bad)
    assert not (tmp_path / "x").exists() and not (tmp_path / "state" / "resolv.conf").exists()


@pytest.mark.parametrize(
    "bad", ["lnb-0123456789a", "lnv0123456789ab", "lnb-abc", "lnb-mine", "lnb-", "lnd0123456789a", "lnx12", "lnvab"]
)
def test_bridge_name_cannot_take_a_name_libnet_derives(bad) -> None:
    """Any name in libnet's link name spaces, not only the exact derived shapes (a shorter lnb-* was
    accepted and read as libnet's own by inventory)."""
    with pytest.raises(InvalidOption, match="libnet's own links"):
        BridgeDriver(instance="0123456789ab").parse_network_options({"bridge_name": bad})
    for ok in ("br-web", "lnvpn0", "lnb0", "lndocker", "LNB-x"):
        assert BridgeDriver(instance="0123456789ab").parse_network_options({"bridge_name": ok})["bridge_name"] == ok


def test_two_creates_of_one_sandbox_namespace_at_once_keep_the_winners_ledger_record(tmp_path, monkeypatch) -> None:
    """Fuzzer (concurrent Docker Joins of one endpoint, concurrent ``POST /v1/sandboxes`` of one id): both
    creates passed the exists check; the loser's ledger record collided with the winner's temporary file
    (a raw FileNotFoundError: 'internal error'), or its namespace create failed and its clean-up removed
    the winner's ledger record -- the namespace then was never removed with its sandbox."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from libnet import kernel_namespaces
    from libnet.errors import KernelObjectExists

    made: set[str] = set()
    guard = threading.Lock()

    def create(name: str) -> str:
        time.sleep(0.05)  # the other create runs meanwhile
        with guard:
            if name in made:
                raise KernelObjectExists("exists", errno=17, netns=name)
            made.add(name)
        return f"/run/netns/{name}"

    monkeypatch.setattr(kernel_namespaces.netns, "exists", lambda name: name in made)
    monkeypatch.setattr(kernel_namespaces.netns, "create", create)
    ns = KernelNamespaces(str(tmp_path), "0123456789ab")
    start = threading.Barrier(2)

    def one() -> object:
        start.wait(5)
        try:
            return ns.create("lns-x-sb-a", "a")
        except Exception as exc:  # the outcome is the result
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: one(), range(2)))
    assert sorted(type(r).__name__ for r in results) == ["KernelObjectExists", "str"], results
    assert ns.ledger.owns("lns-x-sb-a", "sandbox", "a")
