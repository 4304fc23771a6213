"""The only code in libnet that talks to the kernel.

- :mod:`~libnet.kernel.netns`: namespaces, running code and opening sockets inside one;
- :mod:`~libnet.kernel.netlink`: links, addresses, routes (pyroute2);
- :mod:`~libnet.kernel.neighbours`: neighbour and FDB entries, in bulk;
- :mod:`~libnet.kernel.sysctl`: per-namespace sysctls;
- :mod:`~libnet.kernel.firewall`: nftables rules in libnet's own table;
- :mod:`~libnet.kernel.errors`: errno -> typed libnet errors.

pyroute2 is imported without its package ``__init__`` (which loads every netlink
family it has): :mod:`libnet.lean_packages`.  So is :mod:`unittest`: pyroute2's
rtnl socket module makes a ``unittest.mock.Mock`` at import, and unittest's
``__init__`` loads its whole test framework (case, loader, runner, difflib, pprint:
~0.6 MiB of the agent's RSS, issue 22) for that.
"""

from libnet import lean_packages

lean_packages.install("pyroute2")
lean_packages.install("unittest", shadowed=("main",))
