"""How the ``libnet`` CLI prints lists: tables, ``--filter``, ``--format``, ``-q``,
and a spinner for slow requests.

The semantics follow ``docker network ls`` (docs.docker.com, "docker network
ls", Filtering and Format sections):

- ``--filter KEY=VALUE`` is repeatable; values of the same key are ORed, keys
  are ANDed (``-f driver=bridge -f driver=overlay -f label=env`` lists the
  bridge and overlay networks with an ``env`` label);
- ``--format`` takes ``table`` (the default), ``json`` (one JSON object per
  line), ``table TEMPLATE`` (a header, then the template per object) or a bare
  ``TEMPLATE`` such as ``{{.Name}}\\t{{.Driver}}`` -- a subset of Go's
  templates: ``{{.Field}}``, ``{{.Label "key"}}``, ``{{json .}}``,
  ``{{json .Field}}``, ``{{upper .Field}}``, ``{{lower .Field}}``; ``\\t``
  and ``\\n`` in the text are a tab and a newline, and tab-separated columns
  are aligned.

A bad filter key, template action or field is a usage error (exit 2) naming
what is known; nothing is requested from the agent after it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich ``Console`` made on first use: importing rich costs about as much as
    the rest of the CLI, and ``ls``, ``create``, ``rm`` and ``connect`` print
    without it.  Attributes are the console's; :attr:`is_terminal` answers False
    without rich for a stream that is no terminal (unless ``FORCE_TERMINAL`` is set)."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        """The console (made now if it is not yet)."""
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            self._console = Console(stderr=self._stderr, width=None if self._stderr or stream.isatty() else 160)
        return self._console

    @property
    def is_terminal(self) -> bool:
        stream = sys.stderr if self._stderr else sys.stdout
        if self._console is None and "FORCE_TERMINAL" not in os.environ and not stream.isatty():
            return False
        return self.get().is_terminal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = LazyConsole()
err_console = LazyConsole(stderr=True)

#: a filter: does this object (the agent's JSON) match this value?
Match = Callable[[dict[str, Any], str], bool]
#: a template field: the object's value, shown as text
Field = Callable[[dict[str, Any]], Any]


def table(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """A plain table as docker prints its lists (Go's tabwriter): a header line, then
    a line per row, columns padded to a common width, three spaces apart; tabs and
    newlines inside a cell become spaces.  Plain text, no rich: no markup is
    interpreted in names or labels, and lists pay no rich import."""

    def cell(value: Any) -> str:
        return str(value).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(columns), *("\t".join(cell(v) for v in row) for row in rows)]
    click.echo(_aligned(lines))


def _dumps(obj: Any, indent: int | None = None) -> str:
    import json  # only --json and --format need it: ~2.5 ms of every call's imports (issue 22)

    return json.dumps(obj, indent=indent, default=str)


def emit_json(obj: Any) -> None:
    click.echo(_dumps(obj, indent=2))


# --- filters ----------------------------------------------------------------------


def name_matches(key: str) -> Match:
    """Docker's ``name=`` (``filters.Args.Match``): the whole name, or a regular expression
    found in it, so a plain value is all or part of the name and ``^web$`` is exactly
    ``web``; an invalid expression matches only a name equal to it."""

    def match(obj: dict[str, Any], value: str) -> bool:
        name = obj.get(key) or ""
        try:
            return name == value or re.search(value, name) is not None
        except re.error:
            return False

    return match


def id_prefix(key: str = "id") -> Match:
    """Docker's ``id=``: all or the start of the id."""
    return lambda obj, value: (obj.get(key) or "").startswith(value)


def equals(key: str) -> Match:
    return lambda obj, value: str(obj.get(key) or "") == value


def has_label(obj: dict[str, Any], value: str) -> bool:
    """Docker's ``label=KEY`` (present) or ``label=KEY=VALUE`` (equal)."""
    labels = obj.get("labels") or {}
    key, eq, want = value.partition("=")
    return key in labels and (not eq or labels[key] == want)


def parse_filters(given: tuple[str, ...], known: dict[str, Match]) -> dict[str, list[str]]:
    """``("driver=bridge", "label=env")`` -> ``{"driver": ["bridge"], "label": ["env"]}``;
    click.BadParameter for a filter without ``=`` or with a key not in ``known``."""
    out: dict[str, list[str]] = {}
    for text in given:
        key, eq, value = text.partition("=")
        key = key.strip().lower()
        if not eq:
            raise click.BadParameter(f"a filter is KEY=VALUE, got {text!r}", param_hint="--filter")
        if key not in known:
            raise click.BadParameter(
                f"invalid filter {key!r}; known: {', '.join(sorted(known))}", param_hint="--filter"
            )
        out.setdefault(key, []).append(value)
    return out


def select(objs: list[dict[str, Any]], filters: dict[str, list[str]], known: dict[str, Match]) -> list[dict[str, Any]]:
    """The objects every filter key matches (one of its values each)."""
    return [o for o in objs if all(any(known[k](o, v) for v in values) for k, values in filters.items())]


# --- formats ----------------------------------------------------------------------


class View:
    """How one kind of object is listed.

    ``columns``: (header, field name) of the default table; ``fields``: the
    template fields (Docker's names: ``ID``, ``Name``, ...) -> how to get them;
    ``filters``: ``--filter`` keys -> match; ``quiet``: the field ``-q`` prints.
    (A plain class: :mod:`dataclasses` and making one cost ~2 ms of every call.)"""

    __slots__ = ("columns", "fields", "filters", "quiet")

    def __init__(
        self,
        columns: tuple[tuple[str, str], ...],
        fields: dict[str, Field],
        filters: dict[str, Match] | None = None,
        quiet: str = "ID",
    ) -> None:
        self.columns, self.fields, self.filters, self.quiet = columns, fields, filters or {}, quiet


def _actions(template: str) -> Iterator[re.Match[str]]:
    """The ``{{...}}`` actions of a template (compiled on first use, not at every call's import)."""
    return re.finditer(r"\{\{-?\s*(.*?)\s*-?\}\}", template, re.S)


def _action(view: View, words: list[str]) -> Callable[[dict[str, Any]], str]:
    """One ``{{ ... }}`` of a template, compiled (BadParameter if unknown)."""
    func = words[0] if words and not words[0].startswith(".") else None
    args = words[1:] if func else words
    if func not in (None, "json", "upper", "lower") or len(args) not in (1, 2):
        raise click.BadParameter(
            f"unsupported template action {{{{{' '.join(words)}}}}}; "
            'use {{.Field}}, {{.Label "key"}}, {{json .}}, {{json .Field}}, {{upper .Field}}, {{lower .Field}}',
            param_hint="--format",
        )
    ref = args[0]
    if ref == "." and func == "json" and len(args) == 1:
        return _dumps
    name = ref[1:]
    if name == "Label" and len(args) == 2 and func is None:
        key = args[1].strip('"')
        return lambda obj: str((obj.get("labels") or {}).get(key, ""))
    if name not in view.fields or len(args) != 1:
        raise click.BadParameter(
            f"no field {ref!r}; fields: {', '.join('.' + f for f in view.fields)}", param_hint="--format"
        )
    get = view.fields[name]
    if func == "json":
        return lambda obj: _dumps(get(obj))
    text: Callable[[Any], str] = {"upper": str.upper, "lower": str.lower}.get(func or "", str)
    return lambda obj: text(as_text(get(obj)))


def as_text(value: Any) -> str:
    """A value as a template prints it (as Go would): ``true``, not Python's ``True``; a
    mapping as ``k=v,...`` without its unset (None) keys; a list joined with commas."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={as_text(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return ",".join(as_text(v) for v in value)
    return str(value)


def _constant(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda obj: text


def compile_template(view: View, template: str) -> Callable[[dict[str, Any]], str]:
    """A template (see the module's docstring) as a function of one object."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    parts: list[Callable[[dict[str, Any]], str]] = []
    pos = 0
    for m in _actions(template):
        literal = template[pos : m.start()]
        parts.append(_constant(literal))
        parts.append(_action(view, m.group(1).split()))
        pos = m.end()
    tail = template[pos:]
    if "{{" in tail:  # a "}}" outside an action is text, as in Go's templates
        raise click.BadParameter(f"an unclosed {{{{ in {template!r}", param_hint="--format")
    parts.append(_constant(tail))
    return lambda obj: "".join(p(obj) for p in parts)


def _aligned(lines: list[str]) -> str:
    """Tab-separated columns padded to a common width (like Go's tabwriter)."""
    cells = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return "\n".join("   ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)) for r in cells)


def check_format(view: View, fmt: str | None) -> None:
    """Raise BadParameter now for a bad ``--format`` (before the agent is asked)."""
    if fmt and fmt.strip() not in ("table", "json"):
        compile_template(view, fmt.strip().removeprefix("table"))


def show(view: View, objs: list[dict[str, Any]], fmt: str | None = None, quiet: bool = False) -> None:
    """Print ``objs`` as ``fmt`` says (None: the default table); ``quiet``: only ids."""
    fmt = (fmt or "table").strip()
    if quiet:
        get = view.fields[view.quiet]
        for obj in objs:
            click.echo(as_text(get(obj)))
        return
    if fmt == "json":
        for obj in objs:
            click.echo(_dumps(obj))
        return
    if fmt == "table":
        rows = [tuple(as_text(view.fields[f](o)) for _, f in view.columns) for o in objs]
        table(tuple(h for h, _ in view.columns), rows)
        return
    header = fmt.startswith("table ")
    body = fmt[len("table ") :] if header else fmt
    render = compile_template(view, body)
    lines = [render(o) for o in objs]
    if header:
        headers = {f: h for h, f in view.columns}
        names = [m.group(1).split()[-1].lstrip(".").strip('"') for m in _actions(body.replace("\\t", "\t"))]
        titles = "\t".join(headers.get(n, n.upper()) for n in names)
        lines = [titles, *lines]
    if not lines:  # no objects (and no table header): no output at all, not an empty line
        return
    text = "\n".join(lines)
    click.echo(_aligned(text.split("\n")) if "\t" in text else text)


# --- progress ---------------------------------------------------------------------


@contextmanager
def slow_status(what: str, after: float = 1.0) -> Iterator[None]:
    """Show a spinner on stderr (a terminal only) once ``what`` has taken ``after``
    seconds; nothing for fast requests, pipes and files."""
    if not err_console.is_terminal:
        yield
        return
    status = err_console.status(f"waiting for the agent: {what}")
    lock = threading.Lock()
    state = {"shown": False, "done": False}

    def start() -> None:
        with lock:
            if not state["done"]:
                status.start()
                state["shown"] = True

    timer = threading.Timer(after, start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["shown"]:
                status.stop()


# --- the options of every ls command ------------------------------------------------


def list_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``, ``-q/--quiet``, ``-f/--filter`` and ``--format`` for an ``ls`` command."""
    fn = click.option(
        "--format",
        "fmt",
        metavar="FORMAT",
        help="table (default), json (one object per line), or a template: '{{.Name}}\\t{{.Driver}}', "
        "'table {{.ID}}\\t{{.Name}}'",
    )(fn)
    fn = click.option(
        "-f",
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY=VALUE",
        help="only matching objects (repeatable: the same key ORed, different keys ANDed)",
    )(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="only ids")(fn)
    return click.option("--json", "as_json", is_flag=True, help="print JSON (a list)")(fn)


class Listing:
    """An ``ls`` command's checked options: check them, ask the agent, then :meth:`print`."""

    __slots__ = ("as_json", "filters", "fmt", "quiet", "view")

    def __init__(self, view: View, filters: dict[str, list[str]], fmt: str | None, quiet: bool, as_json: bool) -> None:
        self.view, self.filters, self.fmt, self.quiet, self.as_json = view, filters, fmt, quiet, as_json

    @classmethod
    def check(cls, view: View, filters: tuple[str, ...], fmt: str | None, quiet: bool, as_json: bool) -> Listing:
        """BadParameter (exit 2) for bad filters or a bad format, before the agent is asked."""
        if as_json and (fmt or quiet):
            raise click.UsageError("--json cannot be combined with --format or --quiet")
        check_format(view, fmt)
        return cls(view, parse_filters(filters, view.filters), fmt, quiet, as_json)

    def print(self, objs: list[dict[str, Any]], view: View | None = None) -> None:
        """Filter ``objs`` and print them (``view``: a fuller view than the checked one)."""
        view = view or self.view
        chosen = select(objs, self.filters, view.filters)
        if self.as_json:
            emit_json(chosen)
        else:
            show(view, chosen, self.fmt, self.quiet)


def fetch_each(client: Any, what: str, refs: tuple[str, ...], url: Callable[[str], str]) -> list[Any]:
    """GET each ref, as ``docker network inspect A B``: the ones found, in order, after an
    error line on stderr for each of the others.  The caller prints them, then calls
    :func:`raise_missing`.  A single ref that is not found raises its own error at once;
    an unreachable agent stops at once (exit 3)."""
    from agent.client import AgentError

    if len(refs) == 1:
        return [client.request("GET", url(refs[0]))]
    found = []
    for r in refs:
        try:
            found.append(client.request("GET", url(r)))
        except AgentError as exc:
            click.echo(f"libnet: {what} {r}: {exc.message}", err=True)
    return found


def raise_missing(what: str, refs: tuple[str, ...], found: list[Any]) -> None:
    """After :func:`fetch_each`: :class:`agent.client.AgentError` (exit 1) if some were not found."""
    from agent.client import AgentError

    if len(found) < len(refs):
        raise AgentError(f"{len(refs) - len(found)} of {len(refs)} {what}(s) not found")


def remove_each(client: Any, what: str, refs: tuple[str, ...], url: Callable[[str], str]) -> None:
    """DELETE each ref, printing the removed ones and the errors of the others; raise
    :class:`agent.client.AgentError` (exit 1) if any failed (an unreachable agent stops at once, exit 3)."""
    from agent.client import AgentError

    failed = []
    for r in refs:
        try:
            client.request("DELETE", url(r))
        except AgentError as exc:
            click.echo(f"libnet: {what} {r}: {exc.message}", err=True)
            failed.append(r)
            continue
        click.echo(r)
    if failed:
        raise AgentError(f"{len(failed)} of {len(refs)} {what}(s) not removed: {', '.join(failed)}")
