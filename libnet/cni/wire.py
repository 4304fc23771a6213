"""JSON for the exec'd CNI plugins without the :mod:`json` package.

``import json`` pulls in :mod:`re` (and with it ``enum``, ``functools``,
``collections``): ~10 ms of a plugin's ~35 ms start on this kind of machine,
paid by every ADD and DEL.  The C scanner behind :mod:`json` (``_json``,
built into CPython) parses the same documents without them; values are
written by :func:`dumps` below (strings escaped by ``_json`` too).  Where
``_json`` is missing (another Python implementation), :mod:`json` is used.

Only what the plugins exchange: objects, arrays, strings, numbers, booleans,
null.  Errors are :class:`ValueError` as with :mod:`json`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover - not CPython
    from json.encoder import encode_basestring_ascii as _quote

    _make_scanner = None

_WS = " \t\n\r"


class _Context:
    """What ``_json.make_scanner`` reads from :class:`json.JSONDecoder`: the defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = _make_scanner(_Context()) if _make_scanner is not None else None


def loads(data: bytes | str) -> Any:
    """The value of the JSON document ``data`` (bytes are UTF-8); ValueError if it is not one."""
    text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    end = len(text)
    i = 0
    while i < end and text[i] in _WS:
        i += 1
    try:
        value, i = _scan(text, i)
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at character {exc.value}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except SystemError:
        # a syntax error inside a value: the C scanner builds its error from json.decoder, and
        # only if that is imported already -- so it is, now, to say what is wrong
        import json

        json.loads(text)
        raise ValueError("not a JSON document") from None
    while i < end and text[i] in _WS:
        i += 1
    if i != end:
        raise ValueError(f"extra data after the JSON value at character {i}")
    return value


def dumps(value: Any) -> str:
    """``value`` as compact JSON (dict keys as strings); ValueError for what JSON cannot hold."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 100:
        raise ValueError("nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not JSON")
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        for n, (key, item) in enumerate(value.items()):
            if n:
                out.append(",")
            out.append(_quote(key if isinstance(key, str) else str(key)))
            out.append(":")
            _write(item, out, depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise ValueError(f"{type(value).__name__} is not JSON")
