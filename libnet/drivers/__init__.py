"""Network drivers.  Registered by name in :func:`libnet.driverapi.builtin_drivers`."""
