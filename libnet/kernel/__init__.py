"""The only code in libnet that talks to the kernel.

- :mod:`~libnet.kernel.netns`: namespaces, running code and opening sockets inside one;
- :mod:`~libnet.kernel.netlink`: links, addresses, routes (pyroute2);
- :mod:`~libnet.kernel.neighbours`: neighbour and FDB entries, in bulk;
- :mod:`~libnet.kernel.sysctl`: per-namespace sysctls;
- :mod:`~libnet.kernel.firewall`: nftables rules in libnet's own table;
- :mod:`~libnet.kernel.errors`: errno -> typed libnet errors.

pyroute2 is imported without its package ``__init__`` (which loads every netlink
family it has): :mod:`libnet.lean_packages`.
"""

from libnet import lean_packages

lean_packages.install("pyroute2")
