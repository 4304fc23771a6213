"""``libnet cni install``: put the ``libnet`` and ``libnet-ipam`` executables in a CNI bin dir.

Each is a two-line script run by this Python with ``-IS`` (no site
packages, no user site, no environment): the plugins need only the standard
library and :mod:`libnet.cni` (relative imports only), imported as the top-level
package ``cni`` from ``libnet/``, which the script puts first on ``sys.path``.
"""

from __future__ import annotations

import os
import sys

PLUGINS = {"libnet": "cni.plugin", "libnet-ipam": "cni.ipam"}


def script(module: str, python: str | None = None) -> str:
    # the package's own directory: ``cni`` is imported as a top-level package, so
    # ``libnet/__init__`` (its errors and typing, ~15 ms) is not loaded at all
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (
        f"#!{python or sys.executable} -IS\n"
        f"import sys; sys.path.insert(0, {root!r})\n"
        f"from {module} import main; sys.exit(main())\n"
    )


def install(bin_dir: str, python: str | None = None) -> list[str]:
    """Write the executables into ``bin_dir`` (created if missing); their paths."""
    os.makedirs(bin_dir, exist_ok=True)
    out = []
    for name, module in PLUGINS.items():
        path = os.path.join(bin_dir, name)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(script(module, python))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        out.append(path)
    return out
