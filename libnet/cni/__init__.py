"""CNI plugins for libnet: ``libnet`` (attach through the agent) and
``libnet-ipam`` (addresses and names from libnet for the reference ``bridge``),
CNI 1.1 (ADD, DEL, CHECK, VERSION, STATUS, GC; 0.3.0 to 1.0.0 configs too).

The exec'd path imports only the standard library and :mod:`libnet.cni`
itself (a unit test keeps it so): a runtime execs a plugin per attach, so its
start time is part of every container start.
"""
