"""aiohttp's server (:mod:`aiohttp.web`) without aiohttp's client.

``from aiohttp import web`` runs aiohttp's package ``__init__``, which imports its
whole client as well (about 4 MiB of the agent's RSS, issue 22); the agent serves
HTTP and asks dockerd through :mod:`agent.docker_names`' own small client.  The
agent's modules import ``web`` from here: aiohttp is then a lean package
(:mod:`libnet.lean_packages`), and code that does use aiohttp's client (the
consul store, tests) still gets it on first use.
"""

from libnet import lean_packages

lean_packages.install("aiohttp", version=True)

from aiohttp import web  # noqa: E402
from aiohttp.http_exceptions import HttpProcessingError  # noqa: E402
from aiohttp.web_protocol import RequestPayloadError  # noqa: E402

__all__ = ["HttpProcessingError", "RequestPayloadError", "web"]
