"""The agent's HTTP/JSON client on its unix socket, used by the ``libnet`` CLI,
the test harnesses and the benchmarks.

Errors: :class:`AgentError` (exit code 1) when the agent refused a request,
:class:`Unreachable` (exit code 3) when it cannot be reached.  A slow request
can show progress through :attr:`Client.progress` (the CLI sets a spinner).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import click


class AgentError(click.ClickException):
    """The agent refused a request."""

    exit_code = 1


class Unreachable(click.ClickException):
    """The agent cannot be reached (no socket, refused, no answer)."""

    exit_code = 3


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("libnet", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Client:
    """HTTP/JSON over the agent's unix socket.

    ``progress(what)`` wraps each request (``what`` is e.g. ``"POST
    /v1/networks"``): the CLI sets one that shows a spinner when a request
    takes more than a second; the default shows nothing."""

    def __init__(self, path: str, timeout: float = 60) -> None:
        self.path, self.timeout = path, timeout
        self.progress: Callable[[str], AbstractContextManager[object]] = lambda what: contextlib.nullcontext()

    def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None for an empty one); AgentError on 4xx/5xx."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            with self.progress(f"{method} {url.split('?', 1)[0]}"):
                conn.request(method, url, body=payload, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
        except PermissionError:
            raise Unreachable(
                f"permission denied on the libnet agent's socket {self.path} (mode 0660).\n"
                "  Run libnet as root (sudo libnet ...) or as a member of the socket's group."
            ) from None
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unreachable(
                f"cannot reach the libnet agent at {self.path} ({exc.strerror or exc}).\n"
                "  Is libnet-agent running? Start it (systemctl start libnet-agent) or point --socket at it."
            ) from None
        except (TimeoutError, OSError) as exc:
            raise Unreachable(f"the libnet agent at {self.path} did not answer: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                err = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                raise AgentError(f"agent answered {resp.status}: {data[:200]!r}") from None
            raise AgentError(_explain(resp.status, err))
        return json.loads(data) if data else None


def _explain(status: int, err: dict[str, Any]) -> str:
    hints = {
        404: "check the name or id (libnet network ls, libnet sandbox ls)",
        409: "it conflicts with what exists; inspect it, or remove the other object first",
        400: "the request was invalid; see libnet COMMAND --help",
        503: "a dependency is unavailable (store or cluster); try again, check libnet agent status",
    }
    ids = {k: v for k, v in err.items() if k not in ("kind", "message", "type")}
    detail = f" ({', '.join(f'{k}={v}' for k, v in ids.items())})" if ids else ""
    hint = hints.get(status, "")
    return f"{err.get('message', 'failed')}{detail}" + (f"\n  hint: {hint}" if hint else "")
