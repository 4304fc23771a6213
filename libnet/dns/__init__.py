"""libnet's embedded DNS: records (pure), resolver (pure), server, forwarder; see :mod:`libnet.dns.service`.

(A package of libnet, not a top-level ``dns``: that name belongs to dnspython.)
"""
