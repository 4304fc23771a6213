"""The CNI plugins without root: the exec'd path stays on the standard library
and starts fast; calling convention and result shapes (issue 19)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from libnet.cni import common
from libnet.cni.install import install

HEAVY = ("aiohttp", "libnet.controller", "click", "pyroute2", "http.client", "libnet.errors", "asyncio")
#: what a bare ``python -IS`` does not load and each exec of a plugin would pay for (~20 ms together here)
AVOIDABLE = ("json", "re", "socket", "enum", "hashlib", "ipaddress", "subprocess", "os")


@pytest.fixture
def bindir(tmp_path):
    install(str(tmp_path))
    return tmp_path


def run(path, stdin: bytes, **env) -> tuple[int, dict | None]:
    r = subprocess.run([str(path)], input=stdin, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, timeout=30)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None)


@pytest.mark.parametrize("plugin", ["libnet", "libnet-ipam"])
def test_exec_path_loads_only_the_standard_library(bindir, plugin):
    module = {"libnet": "cni.plugin", "libnet-ipam": "cni.ipam"}[plugin]
    root = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); import {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = loaded.split()
    assert not [m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")]
    assert not [m for m in loaded for h in AVOIDABLE if m == h or m.startswith(h + ".")]
    assert not [m for m in loaded if m.startswith("libnet")]  # not even libnet/__init__


def test_start_time_is_close_to_a_bare_interpreter(bindir):
    """VERSION through the installed executable costs little more than ``python -IS -c pass``."""

    def timed(argv, stdin=b"{}"):
        out = []
        for _ in range(7):
            t = time.perf_counter()
            subprocess.run(argv, input=stdin, env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True)
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    bare = timed([sys.executable, "-IS", "-c", "pass"])
    plugin = timed([str(bindir / "libnet")])
    assert plugin - bare < 0.06, (plugin, bare)  # measured ~15-20 ms of imports on this kind of machine


def test_version_and_errors(bindir):
    rc, out = run(bindir / "libnet", b'{"cniVersion": "0.4.0"}', CNI_COMMAND="VERSION")
    assert rc == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(common.SUPPORTED)}
    rc, out = run(bindir / "libnet-ipam", b"{", CNI_COMMAND="ADD")
    assert rc == 1 and out["code"] == 6 and out["cniVersion"] == "1.0.0"
    rc, out = run(bindir / "libnet", b"{}", CNI_COMMAND="NOPE")
    assert rc == 1 and out["code"] == 4


def test_args_and_shapes():
    assert common.parse_args("IgnoreUnknown=1;K8S_POD_NAME=a") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a"}
    with pytest.raises(common.CniError) as e:
        common.check_args({"X": "1"}, ())
    assert e.value.code == 2
    common.check_args({"X": "1", "IgnoreUnknown": "true"}, ())
    res = {"ips": [{"address": "198.51.100.2/24"}, {"address": "2001:db8::2/64"}]}
    assert [ip["version"] for ip in common.shape(res, "0.4.0")["ips"]] == ["4", "6"]
    assert all("version" not in ip for ip in common.shape(res, "1.0.0")["ips"])
    assert common.dns_label("web-1") == "web-1" and common.dns_label("a.b") is None


def test_wire_json_matches_the_json_package():
    """libnet.cni.wire reads and writes what json does, and refuses what json refuses, also in a
    process that never imported json (the C scanner then cannot build its own error)."""
    from libnet.cni import wire

    docs = ['{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"], "b": {}}', " [] ", '"s"', "0"]
    docs.append('{"k":"\\ud83d\\ude00"}')
    for doc in docs:
        assert wire.loads(doc) == json.loads(doc)
        assert json.loads(wire.dumps(wire.loads(doc))) == json.loads(doc)
    assert wire.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    bad = ["{", "", "[1,]", "{} x", '{"a" 1}', "nul", '"\\q"', "[1 2]"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from cni import wire\n"
        f"for doc in {bad!r}:\n"
        "    try:\n        wire.loads(doc)\n        print('accepted', repr(doc))\n"
        "    except ValueError:\n        pass\n"
    )
    r = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    for value in (float("nan"), object(), {1: {2: set()}}):
        with pytest.raises(ValueError):
            wire.dumps(value)


@pytest.mark.parametrize("plugin", ["libnet", "libnet-ipam"])
def test_unreadable_stdin_is_an_io_failure(bindir, tmp_path, plugin):
    """Code 5 (I/O failure): the config cannot be read (stdin open for writing only here: EBADF)."""
    fd = os.open(tmp_path / "write-only", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        r = subprocess.run(
            [str(bindir / plugin)], stdin=fd, env={"CNI_COMMAND": "ADD"}, capture_output=True, timeout=30
        )
    finally:
        os.close(fd)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["code"] == 5 and "stdin" in out["msg"], out


def test_install_with_another_python(tmp_path):
    """``libnet cni install --python``: the plugins run on any CPython with its standard library."""
    other = "/usr/bin/python3"
    if not os.access(other, os.X_OK):
        pytest.skip("no /usr/bin/python3")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "cni", "install", "--bin-dir", str(tmp_path), "--python", other],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "libnet").read_text().startswith(f"#!{other} -IS\n")
    rc, out = run(tmp_path / "libnet-ipam", b'{"cniVersion": "1.0.0"}', CNI_COMMAND="VERSION")
    assert rc == 0 and out["cniVersion"] == "1.0.0"


# --- breaker findings (issue 19): bad input is a clear CNI error, never 199 or a wrong action ---------------


def _call(conf: dict, command: str = "GC") -> common.Call:
    return common.make_call({"CNI_COMMAND": command}, json.dumps(conf).encode())


def test_gc_without_a_list_of_valid_attachments_is_refused():
    """GC removes every attachment not listed: a config without the list (a hand-run GC, a runtime
    that names it ``cni.dev/attachments`` as an earlier spec text did) must not remove them all."""
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "libnet"}
    with pytest.raises(common.CniError) as e:
        common.valid_attachments(_call(conf))
    assert e.value.code == 7 and "valid-attachments" in e.value.msg
    keep = [{"containerID": "c1", "ifname": "eth0"}]
    assert common.valid_attachments(_call({**conf, "cni.dev/attachments": keep})) == [
        {"container_id": "c1", "ifname": "eth0"}
    ]
    assert common.valid_attachments(_call({**conf, "cni.dev/valid-attachments": []})) == []


@pytest.mark.parametrize(
    "prev",
    [
        {"interfaces": "abc"},
        {"interfaces": [1]},
        {"interfaces": [{"name": "eth0", "mac": 5}]},
        {"ips": 5},
        {"ips": [{"x": 1}]},
        {"ips": [{"address": "198.51.100.2/24", "interface": "0"}]},
        {"routes": [{"gw": "198.51.100.1"}]},
        {"dns": []},
        [],
    ],
)
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_malformed_prev_result_is_code_7(bindir, prev, command):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "libnet", "socket": "/nonexistent", "prevResult": prev}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net"}
    rc, out = run(bindir / "libnet", json.dumps(conf).encode(), **env)
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"], out


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_with_a_config_before_0_4_0_is_code_1(bindir, version):
    conf = {"cniVersion": version, "name": "n", "type": "libnet", "socket": "/nonexistent", "prevResult": {}}
    env = {"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net"}
    rc, out = run(bindir / "libnet", json.dumps(conf).encode(), **env)
    assert rc == 1 and out["code"] == 1 and out["cniVersion"] == version, out


def test_deeply_nested_json_is_a_decode_failure(bindir):
    rc, out = run(bindir / "libnet", b"[" * 100000, CNI_COMMAND="ADD")
    assert rc == 1 and out["code"] == 6, out


@pytest.mark.parametrize("ips", [5, "198.51.100.9", [7], {"a": 1}])
def test_requested_ips_of_the_wrong_type_are_code_7(ips):
    for conf in ({"runtimeConfig": {"ips": ips}}, {"args": {"cni": {"ips": ips}}}):
        call = common.Call("ADD", "c1", "/proc/self/ns/net", "eth0", {}, "", {"cniVersion": "1.0.0", **conf})
        with pytest.raises(common.CniError) as e:
            common.requested_ips(call)
        assert e.value.code == 7 and "ips" in e.value.msg


def test_two_requested_addresses_of_one_family_are_code_7():
    """Not the first one silently: libnet gives an interface one address per family."""

    def call(ip_arg: str, conf: dict | None = None) -> common.Call:
        return common.Call("ADD", "c1", "/x", "eth0", {"IP": ip_arg}, "", {"cniVersion": "1.0.0", **(conf or {})})

    with pytest.raises(common.CniError) as e:
        common.requested_ips(call("198.51.100.7,198.51.100.8"))
    assert e.value.code == 7 and "one IPv4" in e.value.msg
    with pytest.raises(common.CniError):
        common.requested_ips(call("2001:db8::7", {"runtimeConfig": {"ips": ["2001:db8::8/64"]}}))
    both = call("198.51.100.7,2001:db8::7", {"runtimeConfig": {"ips": ["198.51.100.7/24"]}})
    assert common.requested_ips(both) == ("198.51.100.7", "2001:db8::7")  # the same one twice is fine


@pytest.mark.parametrize("plugin", ["libnet", "libnet-ipam"])
def test_a_socket_path_too_long_for_a_unix_socket_is_code_7(bindir, plugin):
    """Not 11 (try again later): no retry makes a path longer than ``sun_path`` work."""
    sock = "/" + "s" * 200
    conf = {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": plugin,
        "socket": sock,
        "ipam": {"type": plugin, "socket": sock},
    }
    if plugin == "libnet":
        del conf["ipam"]
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    rc, out = run(bindir / plugin, json.dumps(conf).encode(), **env)
    assert rc == 1 and out["code"] == 7 and "socket" in out["msg"], out
