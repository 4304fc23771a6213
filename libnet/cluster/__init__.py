"""Cluster membership: the Serf RPC client, Serf agent supervision, and the
:class:`~libnet.cluster.membership.Membership` contract with a Serf
implementation and an in-memory fake."""
