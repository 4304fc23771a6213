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


def _modules_after(code: str) -> set[str]:
    code += "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_kernel_code_loads_no_unused_pyroute2_family() -> None:
    """pyroute2's package ``__init__`` imports every family it has (NDB with sqlite, IPDB,
    nl80211, plan9, ...): ~3.7 MiB of the agent's RSS (issue 22); libnet's kernel code loads
    the submodules it uses."""
    loaded = _modules_after("import libnet.kernel.netlink, libnet.kernel.proxy_plane, libnet.controller")
    assert "pyroute2.iproute" in loaded and "pyroute2.conntrack" in loaded
    assert not loaded & {"pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.netlink.nl80211", "pyroute2.plan9"}


def test_pyroute2_package_names_still_resolve() -> None:
    """Code that asks the package for its own names gets them: its ``__init__`` runs then."""
    code = (
        "import libnet.kernel.netlink\n"
        "from pyroute2 import config\n"  # a submodule: no full __init__ for it
        "import pyroute2, sys\n"
        "assert 'pyroute2.ndb.main' not in sys.modules\n"
        "from pyroute2 import NDB, IPRoute\n"
        "from pyroute2.iproute import IPRoute as direct\n"
        "assert IPRoute is direct and NDB.__name__ == 'NDB' and pyroute2.__version__ and pyroute2.config is config\n"
        "try:\n"
        "    pyroute2.NoSuchThing\n"
        "except AttributeError:\n"
        "    print('missing')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "missing"


def test_agent_loads_no_aiohttp_client() -> None:
    """The agent serves HTTP (aiohttp.web) and asks dockerd with a small client of its own:
    aiohttp's client (its package ``__init__`` loads it all) is ~4 MiB of RSS (issue 22)."""
    loaded = _modules_after("import agent.daemon, agent.docker_plugin, agent.cni_api, agent.docker_names")
    assert "aiohttp.web" in loaded
    assert not loaded & {"aiohttp.client", "aiohttp.cookiejar", "aiohttp.connector", "pyroute2.ndb.main"}


def test_aiohttp_package_names_still_resolve() -> None:
    code = (
        "import agent.daemon, aiohttp\n"
        "assert aiohttp.__version__\n"
        "from aiohttp import ClientSession, web\n"
        "from aiohttp.client import ClientSession as direct\n"
        "assert ClientSession is direct and aiohttp.web is web\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_network_ls_loads_no_json_or_dataclasses(tmp_path) -> None:
    """``libnet network ls`` as run (console script's ``main``): its table needs neither :mod:`json`
    (the client decodes with ``_json``) nor :mod:`dataclasses`: ~4 ms of each call (issue 22)."""
    out = tmp_path / "modules"
    code = (
        "import atexit, sys\n"
        "path = sys.argv[1]\n"
        "atexit.register(lambda: open(path, 'w').write(' '.join(sorted(sys.modules))))\n"
        "sys.argv[1:] = ['--socket', '/nonexistent/libnet.sock', 'network', 'ls']\n"
        "from agent.cli import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    loaded = set(out.read_text().split())
    assert "agent.cli_output" in loaded
    assert not loaded & {"json", "dataclasses", "libnet.controller", "aiohttp"}


def test_kernel_code_loads_no_unittest_framework() -> None:
    """pyroute2 makes a ``unittest.mock.Mock`` at import; unittest's ``__init__`` would load its
    whole framework (case, loader, runner, difflib, pprint: ~0.6 MiB of the agent's RSS, issue 22)."""
    loaded = _modules_after("import agent.daemon")
    assert "unittest.mock" in loaded and "pyroute2.iproute" in loaded
    assert not loaded & {"unittest.case", "unittest.runner", "unittest.loader", "difflib"}


def test_unittest_names_still_resolve_after_the_kernel_code() -> None:
    """``unittest.main`` is ``TestProgram`` (its ``__init__`` binds it over the submodule of that name)."""
    code = (
        "import libnet.kernel.netlink, unittest\n"
        "assert unittest.main is unittest.TestProgram, unittest.main\n"
        "from unittest import TestCase, main, mock\n"
        "assert main is unittest.TestProgram and TestCase.__name__ == 'TestCase' and mock.Mock\n"
        "class T(unittest.TestCase):\n"
        "    def test_it(self):\n"
        "        self.assertEqual(1, 1)\n"
        "unittest.main(argv=['t'], exit=False)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stderr, r.stderr
