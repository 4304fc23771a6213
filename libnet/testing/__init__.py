"""Test fixtures shared by the tests, the benchmarks and the demo.

- :mod:`~libnet.testing.hosts`: test hosts as network namespaces on a switch;
- :mod:`~libnet.testing.etcd`: a throwaway single-node etcd server.

Nothing here is used by the library itself.
"""
