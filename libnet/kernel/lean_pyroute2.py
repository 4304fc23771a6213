"""pyroute2's submodules without its package ``__init__``.

``import pyroute2.iproute`` runs ``pyroute2/__init__.py`` first, and that imports
every netlink family pyroute2 has (NDB with sqlite, IPDB, nl80211, ethtool, plan9,
ipvs, ...): about 50 modules and 3.7 MiB of the agent's RSS for families libnet
never uses (issue 22, measured as RSS deltas of the imports).  :func:`install`
puts the package in ``sys.modules`` without running its ``__init__``: libnet's
``import pyroute2.iproute`` then loads what it names.  The package's own names
(``from pyroute2 import NDB``, ``pyroute2.__version__``) still work for any code:
the first one asked for runs the real ``__init__`` then, once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

NAME = "pyroute2"


def install() -> bool:
    """Make ``pyroute2`` a package whose ``__init__`` runs on first use of one of its own
    names; False (nothing changed) if it is imported already or cannot be found."""
    if NAME in sys.modules:
        return False
    spec = importlib.util.find_spec(NAME)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if not name.startswith("__") and importlib.util.find_spec(f"{NAME}.{name}") is not None:
            return importlib.import_module(f"{NAME}.{name}")  # a submodule: what `from pyroute2 import config` means
        # one of the names the package's __init__ defines: run it now (once) in this module
        vars(package).pop("__getattr__", None)
        loader.exec_module(package)
        try:
            return vars(package)[name]
        except KeyError:
            raise AttributeError(f"module {NAME!r} has no attribute {name!r}") from None

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[NAME] = package
    return True


def is_lean(module: types.ModuleType | None = None) -> bool:
    """Whether the package's ``__init__`` has not run (yet)."""
    module = module or sys.modules.get(NAME)
    return module is not None and "__getattr__" in vars(module)
