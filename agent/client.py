"""The agent's HTTP/JSON client on its unix socket, used by the ``libnet`` CLI,
the test harnesses and the benchmarks.

Errors: :class:`AgentError` (exit code 1) when the agent refused a request,
:class:`Unreachable` (exit code 3) when it cannot be reached.  A slow request
can show progress through :attr:`Client.progress` (the CLI sets a spinner).

The transport is the CNI plugin's (:mod:`libnet.cni.client`: HTTP/1.1 over the
socket with the standard library's ``_socket``), not :mod:`http.client`, whose
``email`` and ``ssl`` imports cost about 30 ms of CPU per CLI call on this kind
of machine (issue 22).  Each request has a connection of its own, as before:
a :class:`Client` may be shared by threads, and a request is never re-sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import click

from libnet.cni import client as transport


class AgentError(click.ClickException):
    """The agent refused a request."""

    exit_code = 1


class Unreachable(click.ClickException):
    """The agent cannot be reached (no socket, refused, no answer)."""

    exit_code = 3


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
        conn = transport.Client(self.path, self.timeout)  # fresh: the transport re-sends only on a kept-alive one
        try:
            with self.progress(f"{method} {url.split('?', 1)[0]}"):
                return conn.request(method, url, body)
        except transport.AgentRefused as exc:
            if not exc.error:  # an error status without libnet's error object
                raise AgentError(f"agent answered {exc.status}") from None
            raise AgentError(_explain(exc.status, exc.error)) from None
        except transport.Unreachable as exc:
            raise _unreachable(self.path, exc.__cause__) from None
        except ValueError as exc:  # not JSON: no libnet agent on that socket
            raise AgentError(f"the answer of {self.path} is not JSON: {exc}") from None
        finally:
            conn.close()


def _unreachable(path: str, cause: BaseException | None) -> Unreachable:
    if isinstance(cause, PermissionError):
        return Unreachable(
            f"permission denied on the libnet agent's socket {path} ({_access(path)}).\n"
            "  Run libnet as root (sudo libnet ...) or as a member of the socket's group."
        )
    if isinstance(cause, FileNotFoundError | ConnectionRefusedError):
        return Unreachable(
            f"cannot reach the libnet agent at {path} ({cause.strerror or cause}).\n"
            "  Is libnet-agent running? Start it (systemctl start libnet-agent) or point --socket at it."
        )
    return Unreachable(f"the libnet agent at {path} did not answer: {cause}")


def _access(path: str) -> str:
    """``owner USER:GROUP, mode 0660`` of ``path`` as it is (the agent makes its socket
    0660), or why it cannot be seen (a directory on the way is not searchable)."""
    import grp
    import os
    import pwd

    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot look at it: {exc.strerror}; a directory on its path may not be searchable"
    try:
        owner = f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    except KeyError:  # ids without names
        owner = f"{st.st_uid}:{st.st_gid}"
    return f"owner {owner}, mode {st.st_mode & 0o7777:04o}"


def _id_text(value: Any) -> str:
    """An error's id as text: a list of ids joined with commas (not Python's ``['…']``)."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _explain(status: int, err: dict[str, Any]) -> str:
    hints = {
        404: "check the name or id (libnet network ls, libnet sandbox ls)",
        409: "it conflicts with what exists; inspect it, or remove the other object first",
        400: "the request was invalid; see libnet COMMAND --help",
        503: "a dependency is unavailable (store or cluster); try again, check libnet agent status",
    }
    ids = {k: v for k, v in err.items() if k not in ("kind", "message", "type")}
    detail = f" ({', '.join(f'{k}={_id_text(v)}' for k, v in ids.items())})" if ids else ""
    hint = hints.get(status, "")
    return f"{err.get('message', 'failed')}{detail}" + (f"\n  hint: {hint}" if hint else "")
