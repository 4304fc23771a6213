"""libnet-agent: the per-host daemon (composition root), its HTTP API on a
unix socket, and the ``libnet`` command-line client."""
