"""Well-known paths of the agent, importable without the agent (the CLI needs
only these: importing :mod:`agent.config` would load IPAM, DNS and the store)."""

#: the agent's API socket (``libnet-agent --socket``, ``libnet --socket``)
DEFAULT_SOCKET = "/run/libnet/libnet.sock"
