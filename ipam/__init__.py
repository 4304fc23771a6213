"""IPAM: dual-stack address management (see ipam.api for the contract)."""
