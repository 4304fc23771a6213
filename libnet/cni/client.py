"""A minimal client of the agent's HTTP API over its unix socket.

Standard library only, and not even :mod:`http.client` (it pulls in ``email``
and ``ssl``: ~30 ms of imports per exec'd plugin) nor :mod:`socket` (``enum``
and more, ~5 ms: ``_socket`` does): HTTP/1.1 with keep-alive, bodies by
``Content-Length`` or chunked, which is what the agent sends.
"""

from __future__ import annotations

import _socket

from . import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the agent's default API socket (as ``agent.paths.DEFAULT_SOCKET``; not imported to stay light)
DEFAULT_SOCKET = "/run/libnet/libnet.sock"
_MAX = 64 << 20


class Unreachable(Exception):
    """The agent's socket does not answer (not running, wrong path, timed out); the
    :class:`OSError` behind it is its ``__cause__``."""


class AgentRefused(Exception):
    """The agent answered with an error status; ``status`` and the ``error`` object it sent."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message") or f"HTTP {status}")
        self.status, self.error = status, error

    @property
    def type(self) -> str:
        return str(self.error.get("type") or self.error.get("kind") or "")


class Client:
    """One keep-alive connection to the agent; :meth:`request` returns the decoded body (None for 204)."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 60.0) -> None:
        self.path, self.timeout = path, timeout
        self._sock: Any = None
        self._file: _Reader | None = None

    def _connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock, self._file = sock, _Reader(sock)

    def request(self, method: str, url: str, body: Any = None) -> Any:
        data = b"" if body is None else wire.dumps(body).encode()
        head = f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        message = head.encode() + b"\r\n" + data
        for attempt in (0, 1):  # once more on a fresh connection if the agent closed the kept-alive one
            fresh = self._sock is None
            try:
                if self._sock is None:
                    self._connect()
                assert self._sock is not None
                self._sock.sendall(message)
                status, raw = self._response()
                break
            except (ConnectionError, EOFError) as exc:
                self.close()
                if attempt or fresh:
                    raise Unreachable(f"agent at {self.path}: {exc}") from exc
            except OSError as exc:
                self.close()
                raise Unreachable(f"agent at {self.path}: {exc.strerror or exc}") from exc
        if status >= 400:
            try:
                err = wire.loads(raw).get("error") or {}
            except (ValueError, AttributeError):
                err = {"message": raw.decode(errors="replace")[:500]}
            raise AgentRefused(status, err if isinstance(err, dict) else {"message": str(err)})
        return wire.loads(raw) if raw else None

    def _response(self) -> tuple[int, bytes]:
        f = self._file
        assert f is not None
        line = f.readline(65536)
        if not line:
            raise EOFError("connection closed")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError(f"not an HTTP response: {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            h = f.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(f.readline(1024).split(b";")[0], 16)
                if size == 0:
                    while f.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(f.read(size))
                f.readline(16)
            raw = b"".join(chunks)
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n > _MAX:
                raise ConnectionError("answer too large")
            raw = f.read(n)
            if len(raw) < n:
                raise EOFError("connection closed mid-answer")
        else:
            raw = b"" if status in (204, 304) else f.read(_MAX)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, raw

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = self._file = None


class _Reader:
    """Buffered reads from a socket: what ``socket.makefile("rb")`` gave, for ``_socket``."""

    def __init__(self, sock: Any) -> None:
        self._sock, self._buf = sock, bytearray()

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buf += chunk
        return bool(chunk)

    def readline(self, limit: int) -> bytes:
        """Up to and including the next newline (at most ``limit`` bytes; less at end of stream)."""
        while True:
            i = self._buf.find(b"\n", 0, limit)
            if i >= 0:
                return self._take(i + 1)
            if len(self._buf) >= limit or not self._fill():
                return self._take(min(limit, len(self._buf)))

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at end of stream."""
        while len(self._buf) < n and self._fill():
            pass
        return self._take(min(n, len(self._buf)))

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def q(text: str) -> str:
    """``text`` percent-quoted as one path segment (urllib.parse costs an import)."""
    if all(c in _SAFE for c in text):
        return text
    return "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in text.encode())
