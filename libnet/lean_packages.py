"""Third-party packages imported without their package ``__init__``.

``import pyroute2.iproute`` runs ``pyroute2/__init__.py`` first, and that
imports every netlink family pyroute2 has (NDB with sqlite, IPDB, nl80211,
ethtool, plan9, ipvs, ...): about 50 modules and 3.7 MiB of the agent's RSS for
families libnet never uses.  ``from aiohttp import web`` likewise loads
aiohttp's whole client (cookie jar, multipart, ``urllib.request``, ...): the
agent serves HTTP and asks dockerd through a small client of its own (issue 22,
measured as RSS deltas of the imports).

:func:`install` puts such a package in ``sys.modules`` without running its
``__init__``: ``import pyroute2.iproute`` then loads what it names.  The
package's own names (``from pyroute2 import NDB``, ``aiohttp.ClientSession``)
still work for any code: the first one asked for runs the real ``__init__``
then, once, in the same module object.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
import types
from typing import Any

_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']\s*$""", re.MULTILINE)


def install(name: str, *, version: bool = False, shadowed: tuple[str, ...] = ()) -> bool:
    """Make package ``name`` one whose ``__init__`` runs on first use of one of its own
    names; ``version``: its submodules read ``__version__`` from it, which is then taken
    from the ``__init__``'s source (a plain literal, else nothing changes); ``shadowed``:
    names the ``__init__`` binds to something else than the submodule of that name
    (``unittest.main`` is ``TestProgram``), which run the ``__init__`` as any other of
    its names.  False (nothing changed) if it is imported already or cannot be found."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None or spec.origin is None:
        return False
    preset: dict[str, str] = {}
    if version:
        with open(spec.origin, encoding="utf-8") as f:
            found = _VERSION.search(f.read())
        if found is None:
            return False
        preset["__version__"] = found.group(1)
    package = importlib.util.module_from_spec(spec)
    vars(package).update(preset)
    loader = spec.loader
    # threads asking for a package name at once: the first runs the __init__, the others
    # wait for it (without this they found the name missing: ImportError "cannot import
    # name 'NDB' from 'pyroute2'"); the running thread's own re-entries (the __init__
    # asking for a name it has not defined yet) get AttributeError, as in a plain import
    lock = threading.RLock()
    running: list[int] = []

    def __getattr__(attr: str) -> Any:
        if (
            attr not in shadowed
            and not attr.startswith("__")
            and importlib.util.find_spec(f"{name}.{attr}") is not None
        ):
            return importlib.import_module(f"{name}.{attr}")  # a submodule: what `from pyroute2 import config` means
        # a name the package's __init__ defines: run it now (once) in this module
        with lock:
            if running:  # only the thread running the __init__ gets here meanwhile (an RLock)
                raise AttributeError(f"module {name!r} has no attribute {attr!r} (yet)")
            if vars(package).get("__getattr__") is __getattr__:
                running.append(threading.get_ident())
                try:
                    loader.exec_module(package)
                finally:
                    running.clear()
                    if vars(package).get("__getattr__") is __getattr__:  # not the package's own (aiohttp has one)
                        del vars(package)["__getattr__"]
        found = vars(package)
        if attr in found:
            return found[attr]
        own = found.get("__getattr__")
        if own is not None and own is not __getattr__:
            return own(attr)
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    __getattr__.lean = True  # type: ignore[attr-defined]
    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = package
    return True


def is_lean(module: types.ModuleType | str) -> bool:
    """Whether the package's ``__init__`` has not run (yet)."""
    found = sys.modules.get(module) if isinstance(module, str) else module
    return found is not None and getattr(vars(found).get("__getattr__"), "lean", False)
