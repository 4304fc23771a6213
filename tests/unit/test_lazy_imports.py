"""Importing the CLI, the errors or IPAM's pure parts loads no controller, driver or
DNS server (issue 17: the CLI paid ~280 ms of imports for one constant)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("libnet.controller", "libnet.dns.server", "libnet.drivers.bridge", "libnet.drivers.overlay", "aiohttp")


@pytest.mark.parametrize(
    "module", ["agent.cli", "libnet", "libnet.errors", "agent.paths", "ipam", "ipam.ipam", "ipam.pools"]
)
def test_import_is_light(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    assert not [m for m in HEAVY if m in loaded]


def test_cli_loads_no_model_store_or_asyncio() -> None:
    """``libnet network ls`` needs none of them; ``network create`` loads the validation
    it needs when it runs (issue 22: a third of the CLI's imports were these)."""
    code = "import sys, json, agent.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert not loaded & {"asyncio", "libnet.model", "libnet.store", "libnet.validation"}


def test_lazy_names_still_resolve() -> None:
    import libnet

    assert libnet.Controller.__name__ == "Controller" and libnet.SyncController.__name__ == "SyncController"
    with pytest.raises(AttributeError):
        libnet.NoSuchThing  # noqa: B018


def test_cli_loads_no_rich_http_client_email_or_ssl() -> None:
    """``libnet network ls`` prints a plain table and talks HTTP over ``_socket``: rich
    (~40 ms), http.client with email and ssl (~30 ms) are loaded only by the commands that
    need them (issue 22: the CLI call's budget is 100 ms)."""
    code = (
        "import sys, json, agent.cli\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(agent.cli.cli, ['--socket', '/nonexistent/libnet.sock', 'network', 'ls'])\n"
        "assert r.exit_code == 3, r.output\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert not loaded & {"rich", "rich.console", "http.client", "email", "ssl", "urllib.request"}
