"""An asyncio client for the Serf agent's RPC protocol.

Why our own: serf-python is Python 2 only, asyncserf fails on current anyio,
serfclient lacks query/respond/tags (DESIGN.md, "Cluster").

Wire format (``shared/reference/serf-rpc.md``): msgpack maps back to back on
TCP, a header ``{Command, Seq}`` and an optional body per request, a header
``{Seq, Error}`` and an optional body per response.  One connection carries
everything: plain requests, event streams, log monitors and queries, whose
records arrive interleaved and are dispatched by ``Seq``.

Framing is by shape, not by a table alone: a map whose keys are exactly
``Seq`` and ``Error`` is a header, anything else is the body of the header
before it.  That copes with agents that send a body on error (join,
members, keys) or, in newer versions, on success where older ones did not
(force-leave).

The client reconnects with exponential backoff when the agent goes away;
plain calls in flight fail with :class:`SerfUnavailable`, open streams and
monitors are re-opened on the new connection and their iterators go on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from libnet.cluster.membership import QUERY_LIMIT, USER_EVENT_LIMIT
from libnet.errors import BadRequest, Conflict, LibnetError, NotFound, Unavailable

log = logging.getLogger("libnet.cluster.serf")

#: bytes read from the RPC connection at a time, and the unpacker's first buffer: msgpack's
#: default (read_size 0) is a 1 MiB buffer that the stream walks through before reusing its
#: start, so after ~1 MiB of events it was all resident for good (~1 MiB of the agent's RSS,
#: issue 22); it grows for a larger message as before
READ_SIZE = 65536

# the largest user event Serf accepts (name + payload), and query payload: USER_EVENT_LIMIT, QUERY_LIMIT


# --- errors -------------------------------------------------------------------------


class SerfError(LibnetError):
    """The agent answered with an error."""

    kind = "serf"


class SerfUnavailable(Unavailable):
    """No connection to the agent (it is down, or restarting); retryable."""


class SerfAuthError(SerfError, BadRequest):
    """Authentication required or the key was wrong."""


class SerfUnsupported(SerfError, BadRequest):
    """Unsupported command or IPC version."""


class SerfConflict(SerfError, Conflict):
    """Handshake already performed, monitor or stream already exists."""


class SerfInvalidFilter(SerfError, BadRequest):
    """The event filter of a stream is invalid."""


class SerfNoSuchQuery(SerfError, NotFound):
    """``respond`` named a query the agent has no pending record of."""


_ERRORS: dict[str, type[SerfError]] = {
    "Unsupported command": SerfUnsupported,
    "Unsupported IPC version": SerfUnsupported,
    "Handshake already performed": SerfConflict,
    "Handshake required": SerfAuthError,
    "Monitor already exists": SerfConflict,
    "Invalid event filter": SerfInvalidFilter,
    "Stream with given sequence exists": SerfConflict,
    "No pending queries matching ID": SerfNoSuchQuery,
    "Invalid authentication token": SerfAuthError,
    "Authentication required": SerfAuthError,
}


def error_for(text: str, command: str) -> SerfError:
    """The typed error for an error text the agent sent."""
    return _ERRORS.get(text, SerfError)(f"serf {command}: {text}", command=command)


# --- values -------------------------------------------------------------------------


def to_bytes(value: Any) -> bytes:
    """Payloads as bytes: older agents send str."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


@dataclass(frozen=True)
class Member:
    """A cluster member as the agent reports it."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    status: str  # alive, leaving, left, failed
    protocol: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Member:
        addr = m.get("Addr") or b""
        if isinstance(addr, list | tuple):
            addr = bytes(addr)
        try:
            parsed = ipaddress.ip_address(bytes(addr)) if addr else None
            if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
                parsed = parsed.ipv4_mapped  # IPv4 sent in its 16-byte mapped form
            ip = str(parsed) if parsed is not None else ""
        except ValueError:
            ip = to_bytes(addr).decode(errors="replace")
        return cls(
            name=m.get("Name", ""),
            addr=ip,
            port=int(m.get("Port", 0)),
            tags=dict(m.get("Tags") or {}),
            status=m.get("Status", ""),
            protocol=(m.get("ProtocolMin", 0), m.get("ProtocolMax", 0), m.get("ProtocolCur", 0)),
        )


@dataclass(frozen=True)
class KeyResponse:
    """The outcome of a key command across the cluster."""

    messages: dict[str, str]
    num_nodes: int
    num_resp: int
    num_err: int
    keys: dict[str, int] = field(default_factory=dict)


# --- the client ---------------------------------------------------------------------

_NO_BODY = frozenset(
    {"handshake", "auth", "event", "force-leave", "tags", "stop", "leave", "respond", "stream", "monitor", "query"}
)
_HEADER_KEYS = frozenset({"Seq", "Error"})


def _is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.keys() == _HEADER_KEYS


class _Call:
    """A plain request waiting for its response."""

    def __init__(self, command: str, future: asyncio.Future[Any]) -> None:
        self.command = command
        self.future = future

    def expects_body(self, error: str) -> bool:
        return self.command not in _NO_BODY and error not in (
            "Authentication required",
            "Handshake required",
            "Invalid authentication token",
        )

    def deliver(self, header: dict[str, Any], body: Any) -> bool:
        """Returns True when the call is complete."""
        if not self.future.done():
            if header["Error"]:
                self.future.set_exception(error_for(header["Error"], self.command))
            else:
                self.future.set_result(body)
        return True


class _Stream:
    """A stream, monitor or query: an opening response, then records."""

    def __init__(self, command: str, body: dict[str, Any], reopen: bool) -> None:
        self.command = command
        self.body = body
        self.reopen = reopen  # streams and monitors survive reconnects; queries do not
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.opened: asyncio.Future[None] | None = None
        self.seq = 0
        self.closed = False

    def expects_body(self, error: str) -> bool:
        return self.opened is not None and self.opened.done() and not error

    def deliver(self, header: dict[str, Any], body: Any) -> bool:
        if self.opened is not None and not self.opened.done():
            if header["Error"]:
                self.opened.set_exception(error_for(header["Error"], self.command))
                return True
            self.opened.set_result(None)
            return False
        self.queue.put_nowait(body)
        return bool(self.command == "query" and isinstance(body, dict) and body.get("Type") == "done")


class SerfClient:
    """One RPC connection to a Serf agent; see the module docstring.

    ``netns``: the namespace the agent's RPC address lives in (test hosts);
    the socket is created there.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7373,
        auth_key: str | None = None,
        timeout: float = 5.0,
        netns: str | None = None,
        reconnect: bool = True,
    ) -> None:
        self.host, self.port, self.auth_key = host, port, auth_key
        self.timeout = timeout
        self.netns = netns
        self.reconnect = reconnect
        self._seq = itertools.count(1)
        self._pending: dict[int, _Call | _Stream] = {}
        self._streams: list[_Stream] = []
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._connect_lock = asyncio.Lock()

    # --- connection -------------------------------------------------------------

    async def connect(self) -> SerfClient:
        """Connect, handshake and authenticate (within the timeout)."""
        async with self._connect_lock:
            if self._connected.is_set():
                return self
            if self._closed:  # closed for good: iterators must not revive it
                raise SerfUnavailable("the serf client was closed", address=f"{self.host}:{self.port}")
            await asyncio.wait_for(self._open(), self.timeout)
        return self

    async def _open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            if self.netns is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            else:
                from libnet.kernel import netns

                sock = await asyncio.wrap_future(netns.open_socket_future(self.netns, family, socket.SOCK_STREAM))
                sock.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(sock=sock)
        except OSError as exc:
            raise SerfUnavailable(
                f"cannot reach the serf agent at {self.host}:{self.port}: {exc}", address=f"{self.host}:{self.port}"
            ) from exc
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader))
        await self._raw_call("handshake", {"Version": 1})
        if self.auth_key:
            await self._raw_call("auth", {"AuthKey": self.auth_key})
        self._connected.set()
        for stream in self._streams:  # re-open what was open before a reconnect
            if stream.reopen and not stream.closed:
                await self._start_stream(stream)

    async def close(self) -> None:
        """Close the connection; open iterators end."""
        self._closed = True
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._fail_pending(SerfUnavailable("client closed"))
        for stream in self._streams:
            stream.closed = True
            stream.queue.put_nowait(None)

    async def __aenter__(self) -> SerfClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_pending(self, exc: Exception) -> None:
        for item in list(self._pending.values()):
            if isinstance(item, _Call) and not item.future.done():
                item.future.set_exception(exc)
            elif isinstance(item, _Stream) and item.opened is not None and not item.opened.done():
                item.opened.set_exception(exc)
            elif isinstance(item, _Stream) and not item.reopen:
                item.queue.put_nowait(exc)
        self._pending.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, read_size=READ_SIZE)
        waiting: tuple[dict[str, Any], _Call | _Stream] | None = None  # header whose body comes next
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                unpacker.feed(data)
                for obj in unpacker:
                    if _is_header(obj):
                        if waiting is not None:  # the body we waited for never came
                            self._dispatch(*waiting, None)
                        handler = self._pending.get(obj["Seq"])
                        if handler is None:
                            waiting = None
                            continue
                        if handler.expects_body(obj["Error"]):
                            waiting = (obj, handler)
                        else:
                            waiting = None
                            self._dispatch(obj, handler, None)
                    elif waiting is not None:
                        self._dispatch(*waiting, obj)
                        waiting = None
                    # else: a body nobody waits for (e.g. force-leave on newer agents)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("serf connection lost: %s", exc)
        finally:
            self._connected.clear()
            self._fail_pending(SerfUnavailable("connection to the serf agent lost"))
            if not self._closed and self.reconnect:
                asyncio.get_running_loop().create_task(self._reconnect())

    def _dispatch(self, header: dict[str, Any], handler: _Call | _Stream, body: Any) -> None:
        if handler.deliver(header, body):
            self._pending.pop(header["Seq"], None)

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.connect()
                log.info("reconnected to the serf agent at %s:%s", self.host, self.port)
                return
            except (TimeoutError, SerfUnavailable, SerfError, OSError) as exc:
                log.debug("serf reconnect failed: %s", exc)
                delay = min(delay * 2, 5.0)

    # --- requests ----------------------------------------------------------------

    def _send(self, command: str, seq: int, body: dict[str, Any] | None) -> None:
        if self._writer is None:
            raise SerfUnavailable("not connected to the serf agent")
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        self._writer.write(data)

    async def _raw_call(self, command: str, body: dict[str, Any] | None = None) -> Any:
        seq = next(self._seq)
        fut = asyncio.get_running_loop().create_future()
        self._pending[seq] = _Call(command, fut)
        try:
            self._send(command, seq, body)
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise SerfUnavailable(f"serf {command}: no answer within {self.timeout:g}s", command=command) from None
        finally:
            self._pending.pop(seq, None)

    async def call(self, command: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send one request and return the response body (None if it has none)."""
        if not self._connected.is_set():
            if self._closed:
                raise SerfUnavailable("client closed")
            await self.connect()
        if timeout is None:
            return await self._raw_call(command, body)
        saved, self.timeout = self.timeout, timeout
        try:
            return await self._raw_call(command, body)
        finally:
            self.timeout = saved

    async def _start_stream(self, stream: _Stream) -> None:
        stream.seq = next(self._seq)
        stream.opened = asyncio.get_running_loop().create_future()
        self._pending[stream.seq] = stream
        self._send(stream.command, stream.seq, stream.body)
        await asyncio.wait_for(stream.opened, self.timeout)

    async def _iterate(self, stream: _Stream, convert: Callable[[Any], Any]) -> AsyncIterator[Any]:
        if not self._connected.is_set():
            await self.connect()
        self._streams.append(stream)
        try:
            await self._start_stream(stream)
            while True:
                item = await stream.queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                if stream.command == "query" and item.get("Type") == "done":
                    return
                yield convert(item)
        finally:
            stream.closed = True
            if stream in self._streams:
                self._streams.remove(stream)
            self._pending.pop(stream.seq, None)
            if stream.command != "query" and self._connected.is_set():
                with contextlib.suppress(SerfError, SerfUnavailable, asyncio.TimeoutError):
                    await self.call("stop", {"Stop": stream.seq})

    # --- the commands ------------------------------------------------------------

    async def members(self) -> list[Member]:
        """All members the agent knows (alive, failed, left, ...)."""
        body = await self.call("members")
        return [Member.from_wire(m) for m in body.get("Members") or []]

    async def members_filtered(
        self, tags: dict[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[Member]:
        """Members whose tags, status and name match the given regular expressions."""
        body = await self.call("members-filtered", {"Tags": tags or {}, "Status": status, "Name": name})
        return [Member.from_wire(m) for m in body.get("Members") or []]

    async def join(self, addresses: list[str], replay: bool = False) -> int:
        """Join the cluster through any of ``addresses`` (``ip:port``); returns how many answered."""
        body = await self.call("join", {"Existing": list(addresses), "Replay": replay}, timeout=max(self.timeout, 10))
        return int(body.get("Num", 0))

    async def leave(self) -> None:
        """Leave the cluster gracefully; the agent shuts down afterwards."""
        await self.call("leave", timeout=max(self.timeout, 10))

    async def force_leave(self, node: str) -> None:
        """Move a failed node to left."""
        await self.call("force-leave", {"Node": node})

    async def tags(self, set_tags: dict[str, str] | None = None, delete: list[str] | None = None) -> None:
        """Add or change tags of this agent, and delete others."""
        await self.call("tags", {"Tags": set_tags or {}, "DeleteTags": delete or []})

    async def event(self, name: str, payload: bytes = b"", coalesce: bool = False) -> None:
        """Broadcast a user event (name + payload at most 512 bytes)."""
        if len(name.encode()) + len(payload) > USER_EVENT_LIMIT:
            raise BadRequest(
                f"user event too large: {len(name.encode()) + len(payload)} bytes, Serf's limit is {USER_EVENT_LIMIT}",
                name=name,
            )
        await self.call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def stream(self, types: str = "*") -> AsyncIterator[dict[str, Any]]:
        """Event records (``member-join``, ``user:NAME``, ``query``, ... or ``*``)."""
        return self._iterate(_Stream("stream", {"Type": types}, reopen=True), _normalise_record)

    def monitor(self, level: str = "INFO") -> AsyncIterator[str]:
        """The agent's log lines at ``level`` and above."""
        return self._iterate(_Stream("monitor", {"LogLevel": level}, reopen=True), lambda r: r.get("Log", ""))

    def query(
        self,
        name: str,
        payload: bytes = b"",
        timeout: float = 0.0,
        filter_nodes: list[str] | None = None,
        filter_tags: dict[str, str] | None = None,
        request_ack: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Ask the cluster; yields ``{Type: ack|response, From, Payload}`` and ends when the query is done."""
        if len(payload) > QUERY_LIMIT:
            raise BadRequest(f"query payload too large: {len(payload)} bytes, limit {QUERY_LIMIT}", name=name)
        body = {
            "FilterNodes": filter_nodes or [],
            "FilterTags": filter_tags or {},
            "RequestAck": request_ack,
            "Timeout": int(timeout * 1e9),
            "Name": name,
            "Payload": payload,
        }

        def convert(r: dict[str, Any]) -> dict[str, Any]:
            return {"Type": r.get("Type"), "From": r.get("From", ""), "Payload": to_bytes(r.get("Payload"))}

        return self._iterate(_Stream("query", body, reopen=False), convert)

    async def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query received on a stream."""
        await self.call("respond", {"ID": query_id, "Payload": payload})

    async def install_key(self, key: str) -> KeyResponse:
        return _keys(await self.call("install-key", {"Key": key}, timeout=max(self.timeout, 10)))

    async def use_key(self, key: str) -> KeyResponse:
        return _keys(await self.call("use-key", {"Key": key}, timeout=max(self.timeout, 10)))

    async def remove_key(self, key: str) -> KeyResponse:
        return _keys(await self.call("remove-key", {"Key": key}, timeout=max(self.timeout, 10)))

    async def list_keys(self) -> KeyResponse:
        return _keys(await self.call("list-keys", timeout=max(self.timeout, 10)))

    async def stats(self) -> dict[str, dict[str, str]]:
        """The agent's statistics (nested maps of strings)."""
        stats: dict[str, dict[str, str]] = await self.call("stats")
        return stats

    async def get_coordinate(self, node: str) -> dict[str, Any] | None:
        """A node's network coordinate, or None if the agent has none."""
        body = await self.call("get-coordinate", {"Node": node})
        return body.get("Coord") if body and body.get("Ok") else None


def _normalise_record(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    if "Payload" in out:
        out["Payload"] = to_bytes(out["Payload"])
    if "Members" in out:
        out["Members"] = [Member.from_wire(m) for m in out["Members"] or []]
    return out


def _keys(body: dict[str, Any] | None) -> KeyResponse:
    body = body or {}
    return KeyResponse(
        messages=dict(body.get("Messages") or {}),
        num_nodes=int(body.get("NumNodes", 0)),
        num_resp=int(body.get("NumResp", 0)),
        num_err=int(body.get("NumErr", 0)),
        keys=dict(body.get("Keys") or {}),
    )


def new_key() -> str:
    """A fresh gossip encryption key (32 random bytes, base64)."""
    import os

    return base64.b64encode(os.urandom(32)).decode()
