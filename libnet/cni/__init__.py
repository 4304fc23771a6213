"""CNI plugins for libnet: ``libnet`` (attach through the agent) and
``libnet-ipam`` (addresses from libnet's IPAM for the reference ``bridge``).

The exec'd path imports only the standard library and :mod:`libnet.cni`
itself (a unit test keeps it so): a runtime execs a plugin per attach, so its
start time is part of every container start.
"""
