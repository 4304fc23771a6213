"""Packages put in sys.modules without their __init__ (libnet.lean_packages, issue 22): the
package's own names still work for any code, also for threads asking for them at once."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from libnet import lean_packages


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package ``leanprobe_<n>`` whose __init__ takes 0.3 s and has a PEP 562 __getattr__."""
    name = f"leanprobe_{time.monotonic_ns()}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        "import time\n"
        "time.sleep(0.3)  # a heavy __init__ (pyroute2's imports every netlink family)\n"
        "from .sub import VALUE as NAME\n"
        "def __getattr__(attr):\n"
        "    if attr == 'LAZY':\n"
        "        return 'lazy'\n"
        "    raise AttributeError(attr)\n"
    )
    (root / "sub.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lean_packages.install(name)
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_threads_asking_for_a_package_name_at_once_all_get_it(package: str) -> None:
    """The first thread runs the __init__ (0.3 s here); one asking meanwhile found the name
    missing (ImportError "cannot import name 'NDB' from 'pyroute2'" for a library user)."""
    mod = sys.modules[package]
    got: list[object] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            got.append(mod.NAME)
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=ask)
    first.start()
    time.sleep(0.1)  # the first is inside the __init__ now
    others = [threading.Thread(target=ask) for _ in range(3)]
    for t in others:
        t.start()
    for t in (first, *others):
        t.join(30)
    assert errors == [] and got == [42] * 4


def test_the_package_s_own_getattr_is_kept_and_it_is_no_longer_lean(package: str) -> None:
    mod = sys.modules[package]
    assert lean_packages.is_lean(package)
    assert mod.NAME == 42
    assert mod.LAZY == "lazy"  # the package's own PEP 562 __getattr__ (aiohttp has one)
    assert not lean_packages.is_lean(package)
    with pytest.raises(AttributeError):
        mod.MISSING  # noqa: B018
