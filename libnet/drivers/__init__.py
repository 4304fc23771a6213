"""Network drivers.  The built-in ones are listed in :mod:`libnet.drivers.registry`."""
