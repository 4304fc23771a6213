"""Checks of user input shared by the controller and the API."""

from __future__ import annotations

import re
from typing import Any

from libnet.errors import InvalidName, InvalidOption

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_name(name: object, what: str) -> str:
    """A name must be a DNS label (RFC 1123): it becomes a DNS name later."""
    if not isinstance(name, str) or _LABEL.fullmatch(name) is None:
        raise InvalidName(
            f"{what} name {name!r} is not a DNS label: 1-63 letters, digits and '-', "
            "starting and ending with a letter or digit",
            name=str(name),
        )
    return name


def check_labels(labels: object) -> dict[str, str]:
    """Labels: a mapping of strings to strings."""
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidOption("labels must map strings to strings")
    return dict(labels)


def check_options(options: object) -> dict[str, Any]:
    """Driver options: a mapping with string keys (values checked by the driver)."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise InvalidOption("options must be a mapping with string keys")
    return dict(options)


def check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidOption(f"{what} must be true or false", option=what, value=str(value))
    return value


def check_int(value: object, what: str, lo: int, hi: int, hint: str = "") -> int:
    """An integer in ``lo..hi``: an int, or a string of decimal digits (Docker's
    options are strings).  Floats, booleans, ``"1e3"``, infinities are refused,
    never truncated."""
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        n = int(value.strip())
    else:
        n = None
    if n is None or not lo <= n <= hi:
        raise InvalidOption(f"{what} must be a whole number {lo}..{hi}{hint}", option=what, value=str(value)[:64])
    return n
