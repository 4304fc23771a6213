"""What both CNI plugins share: the calling convention (environment, stdin,
stdout, error objects), version negotiation and result shapes (CNI 1.0.0 and
the 0.3.x/0.4.0 configs older runtimes send).  Standard library only."""

from __future__ import annotations

import posix  # not :mod:`os`: it loads ``_collections_abc``, ``posixpath``, ``stat`` (~3 ms of each exec)
import sys

from . import wire
from .client import AgentRefused, Client, Unreachable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
#: commands about a network, not one container (no CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS): CNI 1.1's
NETWORK_COMMANDS = ("GC", "STATUS")
#: the versions that know a result's ``ips[].version`` (gone in 1.0.0)
_IP_VERSION_FIELD = ("0.3.0", "0.3.1", "0.4.0")
#: GC's list of the attachments to keep, and the name an earlier text of the CNI 1.1 spec gave it
VALID_ATTACHMENTS, OLD_VALID_ATTACHMENTS = "cni.dev/valid-attachments", "cni.dev/attachments"
#: the versions before CHECK (0.4.0): a CHECK with such a config is code 1, as the reference plugins answer
_BEFORE_CHECK = ("0.3.0", "0.3.1")

# spec codes
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now (CNI 1.1)
# libnet's own (100+)
AGENT_REFUSED = 100
NO_SUCH_NETWORK = 101
INTERFACE_NAME = 102
CHECK_FAILED = 103
INTERNAL = 199

# validation by character sets, not :mod:`re` (~10 ms of imports per exec)
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
_NOT_IN_IFNAME = frozenset("/: \t\n\r\x0b\x0c")


def _name(text: object, longest: int) -> bool:
    """A letter or digit, then letters, digits, ``_.-``; at most ``longest`` characters
    (container ids, as the CNI spec's reference; network names)."""
    return (
        isinstance(text, str) and 0 < len(text) <= longest and text[0] in _ALNUM and all(c in _NAME_CHARS for c in text)
    )


def _ifname(text: str) -> bool:
    """1 to 15 characters, none of them ``/``, ``:`` or whitespace (what Linux accepts)."""
    return 0 < len(text) <= 15 and not any(c in _NOT_IN_IFNAME for c in text)


def _label(text: str) -> bool:
    """A DNS label: letters, digits and inner hyphens, 1 to 63 characters."""
    return (
        0 < len(text) <= 63 and text[0] in _ALNUM and text[-1] in _ALNUM and all(c in _ALNUM or c == "-" for c in text)
    )


class CniError(Exception):
    """A failure reported to the runtime as ``{cniVersion, code, msg, details}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details
        self.version: str | None = None  # the config's cniVersion, when known before the failure


class Call:
    """One invocation: the command, the environment and the parsed config."""

    __slots__ = ("args", "command", "conf", "container_id", "ifname", "netns", "path")

    def __init__(
        self,
        command: str,
        container_id: str,
        netns: str,
        ifname: str,
        args: dict[str, str],
        path: str,
        conf: dict[str, Any],
    ) -> None:
        self.command, self.container_id, self.netns, self.ifname = command, container_id, netns, ifname
        self.args, self.path, self.conf = args, path, conf

    @property
    def version(self) -> str:
        return str(self.conf.get("cniVersion") or "1.0.0")


def read_env(environ: Any) -> tuple[str, dict[str, str]]:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    return command, dict(environ)


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` ("K=V;K2=V2") as a dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def check_args(args: dict[str, str], known: tuple[str, ...]) -> None:
    """Unknown ``CNI_ARGS`` keys are an error unless ``IgnoreUnknown`` is true (the CNI convention)."""
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(k for k in args if k not in known and k != "IgnoreUnknown")
    if unknown and not ignore:
        raise CniError(UNSUPPORTED_FIELD, f"CNI_ARGS: unknown argument(s) {', '.join(unknown)}", "set IgnoreUnknown=1")


def read_conf(data: bytes, command: str) -> dict[str, Any]:
    try:
        conf = wire.loads(data or b"null")
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    version = conf.get("cniVersion")
    if command == "VERSION":
        return conf
    if not isinstance(version, str) or version not in SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED)}",
        )
    try:
        if command in NETWORK_COMMANDS and version in (*_IP_VERSION_FIELD, "1.0.0"):
            raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0, the config says {version}")
        if command == "CHECK" and version in _BEFORE_CHECK:
            raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, the config says {version}")
        name = conf.get("name")
        if not isinstance(name, str) or not _name(name, 1 << 16):
            raise CniError(INVALID_CONFIG, f"the configuration's name {name!r} is not a valid network name")
        if "prevResult" in conf:
            check_prev_result(conf["prevResult"])
    except CniError as exc:
        exc.version = version  # the error object in the config's version
        raise
    return conf


def _objects(value: object, need: str) -> bool:
    """A list of objects, each with the string field ``need`` (``""``: no field needed)."""
    return isinstance(value, list) and all(
        isinstance(item, dict) and (not need or isinstance(item.get(need), str)) for item in value
    )


def check_prev_result(prev: object) -> None:
    """``prevResult`` shaped as a CNI result (code 7 if not): ``interfaces`` objects with a ``name``,
    ``ips`` objects with an ``address`` (and an integer ``interface`` if any), ``routes`` objects with a
    ``dst``, ``dns`` an object -- what a later plugin builds on, so a malformed one is refused before
    anything is done, not carried into the result or read as something else."""
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    for key, need in (("interfaces", "name"), ("ips", "address"), ("routes", "dst")):
        if key in prev and not _objects(prev[key], need):
            raise CniError(INVALID_CONFIG, f"prevResult.{key} must be a list of objects with a string {need!r}")
    for ip in prev.get("ips", []):
        index = ip.get("interface")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise CniError(INVALID_CONFIG, f"prevResult.ips[].interface {index!r} is not an interface index")
    for iface in prev.get("interfaces", []):
        if not all(isinstance(iface.get(k, ""), str) for k in ("mac", "sandbox")):
            raise CniError(INVALID_CONFIG, "prevResult.interfaces[].mac and .sandbox must be strings")
    if "dns" in prev and not isinstance(prev["dns"], dict):
        raise CniError(INVALID_CONFIG, "prevResult.dns must be an object")


def environ() -> dict[str, str]:
    """The process environment as ``os.environ`` gives it (``posix.environ`` holds bytes)."""
    return {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, v in posix.environ.items()}


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def make_call(environ: Any, stdin: bytes) -> Call:
    command, env = read_env(environ)
    conf = read_conf(stdin, command)
    call = Call(
        command,
        env.get("CNI_CONTAINERID", ""),
        env.get("CNI_NETNS", ""),
        env.get("CNI_IFNAME", ""),
        {},
        env.get("CNI_PATH", ""),
        conf,
    )
    if command == "VERSION":
        return call
    if command in NETWORK_COMMANDS:
        call.args = parse_args(env.get("CNI_ARGS", ""))
        return call
    if not _name(call.container_id, 128):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {call.container_id!r} is missing or not a container id")
    if not _ifname(call.ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {call.ifname!r} is missing or not an interface name")
    if command in ("ADD", "CHECK") and not call.netns.startswith("/"):
        raise CniError(INVALID_ENV, f"CNI_NETNS {call.netns!r} is missing or not an absolute path")
    if command == "ADD" and not _exists(call.netns):
        raise CniError(INVALID_ENV, f"CNI_NETNS {call.netns!r} does not exist")
    call.args = parse_args(env.get("CNI_ARGS", ""))
    return call


def version_result(conf: dict[str, Any]) -> dict[str, Any]:
    asked = conf.get("cniVersion")
    return {"cniVersion": asked if asked in SUPPORTED else LATEST, "supportedVersions": list(SUPPORTED)}


def shape(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.0.0-shaped result in the shape of ``version`` (0.3.x/0.4.0 ips carry ``version``)."""
    out = {"cniVersion": version, **{k: v for k, v in result.items() if k != "cniVersion"}}
    ips = []
    for ip in result.get("ips", []):
        ip = {k: v for k, v in ip.items() if k != "version"}
        if version in _IP_VERSION_FIELD:
            ip["version"] = "6" if ":" in ip["address"] else "4"
        ips.append(ip)
    out["ips"] = ips
    return out


def requested_ips(call: Call) -> tuple[str | None, str | None]:
    """Static addresses asked for: ``runtimeConfig.ips`` (capability ``ips``),
    ``args.cni.ips``, or ``CNI_ARGS`` ``IP=`` (several comma-separated)."""
    wanted: list[str] = []
    rc = call.conf.get("runtimeConfig") or {}
    args = call.conf.get("args") or {}
    cni = args.get("cni") if isinstance(args, dict) else None
    for where, section in (("runtimeConfig", rc), ("args.cni", cni)):
        ips = section.get("ips") if isinstance(section, dict) else None
        if ips is None:
            continue
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise CniError(INVALID_CONFIG, f"{where}.ips must be a list of IP addresses (strings)")
        wanted += ips
    if call.args.get("IP"):
        wanted += call.args["IP"].split(",")
    v4 = v6 = None
    if wanted:
        import ipaddress  # only when addresses are asked for: ~10 ms of imports
    for text in wanted:
        try:
            addr = ipaddress.ip_interface(str(text).strip()).ip
        except ValueError:
            raise CniError(INVALID_CONFIG, f"requested IP {text!r} is not an IP address") from None
        have = v4 if addr.version == 4 else v6
        if have is not None and have != str(addr):
            raise CniError(
                INVALID_CONFIG,
                f"requested IPs {have} and {addr}: one IPv{addr.version} address per interface",
                "libnet gives an interface one address of each family",
            )
        if addr.version == 4:
            v4 = str(addr)
        else:
            v6 = str(addr)
    return v4, v6


def valid_attachments(call: Call) -> list[dict[str, str]]:
    """GC's ``cni.dev/valid-attachments`` as ``[{container_id, ifname}]`` (code 7 if malformed or
    missing: GC removes every attachment not listed, so no list must not mean "none is valid").
    ``cni.dev/attachments``, the name an earlier text of the spec used (libcni sends both), is read
    when the other is absent."""
    items = call.conf.get(VALID_ATTACHMENTS, call.conf.get(OLD_VALID_ATTACHMENTS))
    if items is None:
        raise CniError(INVALID_CONFIG, f"GC needs {VALID_ATTACHMENTS}: the attachments to keep (a list, maybe empty)")
    out = []
    if isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                break
            cid, ifname = item.get("containerID"), item.get("ifname")
            if not isinstance(cid, str) or not isinstance(ifname, str):
                break
            out.append({"container_id": cid, "ifname": ifname})
        else:
            return out
    raise CniError(INVALID_CONFIG, f"{VALID_ATTACHMENTS} must be a list of {{containerID, ifname}}")


#: the longest path a unix socket address holds on Linux (``sun_path`` is 108 bytes with its NUL)
_SUN_PATH = 107


def agent_client(sock: object, field: str) -> Client:
    """A client of the agent's socket ``sock`` (the config's ``field``): an absolute path that fits
    a unix socket address, else code 7 (not 11: no retry makes a bad path work)."""
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(INVALID_CONFIG, f"{field} {sock!r} must be an absolute path")
    if len(sock.encode(errors="surrogateescape")) > _SUN_PATH:
        raise CniError(INVALID_CONFIG, f"{field} is longer than a unix socket path can be ({_SUN_PATH} bytes)")
    return Client(sock)


def ask_status(client: Client, network: str, creatable: bool) -> None:
    """STATUS through the agent (``POST /v1/cni/status``): not ready -- agent unreachable or
    unavailable, network missing with nothing to make it from -- is code 50."""
    try:
        client.request("POST", "/v1/cni/status", {"network": network, "creatable": creatable})
    except Unreachable as exc:
        raise CniError(NOT_AVAILABLE, "the libnet agent is unreachable", str(exc)) from None
    except AgentRefused as exc:
        if exc.status == 404:
            msg = f"libnet network {network!r} does not exist and the config does not say how to make it"
            raise CniError(NOT_AVAILABLE, msg, wire.dumps(exc.error)) from None
        if exc.status != 503:
            raise
        raise CniError(NOT_AVAILABLE, f"libnet: {exc}", wire.dumps(exc.error)) from None


def collect(client: Client, call: Call, network: str) -> None:
    """GC through the agent (``POST /v1/cni/gc``): the network's CNI attachments not in
    ``cni.dev/valid-attachments`` are removed."""
    client.request("POST", "/v1/cni/gc", {"network": network, "valid": valid_attachments(call)})


def dns_label(text: str | None) -> str | None:
    """``text`` if it is a DNS label (a libnet endpoint name), else None."""
    return text if text and _label(text) else None


def agent_error(exc: AgentRefused | Unreachable) -> CniError:
    """An agent failure as a CNI error: unreachable or unavailable -> 11 (try again later),
    bad input -> 7, anything else -> 100 with the agent's message."""
    if isinstance(exc, Unreachable):
        return CniError(TRY_AGAIN_LATER, "the libnet agent is unreachable", str(exc))
    detail = wire.dumps(exc.error)
    if exc.status == 503:
        return CniError(TRY_AGAIN_LATER, f"libnet: {exc}", detail)
    if exc.status == 400:
        return CniError(INVALID_CONFIG, f"libnet: {exc}", detail)
    return CniError(AGENT_REFUSED, f"libnet: {exc}", detail)


def run(handlers: dict[str, Callable[[Call], dict[str, Any] | None]]) -> int:
    """Read the environment and stdin, dispatch, print the result or the error; the exit code."""
    version = "1.0.0"
    try:
        try:
            stdin = sys.stdin.buffer.read()
        except OSError as exc:
            raise CniError(IO_FAILURE, "cannot read the configuration from stdin", str(exc)) from None
        call = make_call(environ(), stdin)
        if call.command != "VERSION":
            version = call.version
        if call.command == "VERSION":
            out: dict[str, Any] | None = version_result(call.conf)
        else:
            out = handlers[call.command](call)
        if out is not None:
            sys.stdout.write(wire.dumps(out))
        return 0
    except CniError as exc:
        return _fail(exc.version or version, exc)
    except (AgentRefused, Unreachable) as exc:
        return _fail(version, agent_error(exc))
    except Exception as exc:
        return _fail(version, CniError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))


def _fail(version: str, exc: CniError) -> int:
    err = {"cniVersion": version if version in SUPPORTED else "1.0.0", "code": exc.code, "msg": exc.msg}
    if exc.details:
        err["details"] = exc.details
    sys.stdout.write(wire.dumps(err))
    return 1


def die(code: int, msg: str, details: str = "") -> NoReturn:
    raise CniError(code, msg, details)
