"""Encryption of overlay networks: WireGuard tunnels between hosts (see :mod:`libnet.encryption.tunnel`)."""
