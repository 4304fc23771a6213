"""The overlay driver: multi-host VXLAN networks (see driver.py)."""
