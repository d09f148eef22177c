"""Client address normalisation: the one place that decides what "the same client" means.

Every part that stores or looks up an address goes through `client_key`, so a login seen as
``::ffff:192.0.2.7`` on a dual-stack listener is found by a relay that asks for ``192.0.2.7``,
and IPv6 clients that rotate privacy addresses inside one /64 can be grouped together.
"""

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65_536)  # relays ask about the same few addresses over and over
def client_key(address: str, ipv6_prefix: int = 128) -> str | None:
    """The ledger key for `address`, or None when it is not an IP address.

    IPv4-mapped IPv6 folds to IPv4. IPv6 is cut to `ipv6_prefix` bits: with 128 the key is the
    address itself (compressed form), otherwise the network in CIDR form (``2001:db8::/64``).
    A scope suffix (``fe80::1%eth0``) and surrounding brackets are dropped.
    """
    text = address.strip().strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
