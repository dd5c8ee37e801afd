"""Which network addresses a repository host may have (pure, no I/O).

A repository URL comes from a stranger, and the hub (or a build pod) connects
to it: without these checks a link could make the hub talk to its own
loopback services, the cluster network or a cloud metadata endpoint
(169.254.169.254). Every address a host has must be public, and the code that
connects pins the checked addresses so DNS cannot answer differently later.

Host spellings are normalised the way curl and git read them, so that
``0x7f.1``, ``2130706433`` and ``0177.0.0.1`` are all recognised as
127.0.0.1 without any DNS lookup.
"""

import ipaddress
import re
import socket

# IPv6 ranges that embed an IPv4 address which may be reached through them.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$")


class HostError(ValueError):
    """A host name that is not acceptable; ``str()`` is one user-facing sentence."""


def parse_ip_literal(host):
    """The address ``host`` spells, in any spelling curl accepts, or None for a name.

    IPv6 literals may come with or without brackets; IPv4 may be dotted-decimal,
    a single decimal/hex/octal number, or short/octal/hex dotted forms
    (``inet_aton`` semantics, which curl and git follow).
    """
    text = host.strip("[]")
    if "%" in text:  # zone index: fe80::1%eth0
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(text.lower()) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def normalise_host(host):
    """Lower-case ``host``, drop a trailing dot, check its syntax; returns the host.

    IP literals come back in their canonical form (IPv6 without brackets).
    Raises :class:`HostError` for anything that is neither an address nor a DNS name.
    """
    if not host:
        raise HostError("The repository URL has no host name.")
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    ip = parse_ip_literal(host)
    if ip is not None:
        return str(ip)
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise HostError("The repository URL has an invalid host name.")
    if _NUMERIC_HOST.match(host):
        # all-numeric but not an address (e.g. 1.2.3.4.5): curl would not read it as a name either
        raise HostError("The repository URL has an invalid host name.")
    return host


def embedded_ipv4(ip):
    """IPv4 addresses an IPv6 address leads to (mapped, 6to4, Teredo, NAT64)."""
    found = []
    if ip.version != 6:
        return found
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(ip) >> 32 == 0 and int(ip) > 0xFFFF:
        found.append(ipaddress.IPv4Address(int(ip)))
    return found


def address_problem(ip, banned_networks=()):
    """Why ``ip`` must not be contacted (a short phrase), or None if it is public."""
    candidates = [*embedded_ipv4(ip), ip]
    for address in candidates:
        for network in banned_networks:
            if address.version == network.version and address in network:
                return "a blocked network"
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address"
        if address.is_multicast:
            return "a multicast address"
        if address.is_unspecified:
            return "an unspecified address"
        if address.is_private:
            return "a private address"
        if address.is_reserved:
            return "a reserved address"
        if not address.is_global:
            return "a non-public address"
    return None


def is_local_name(host):
    """``localhost`` and any name under ``.localhost`` (RFC 6761: always loopback)."""
    return host == "localhost" or host.endswith(".localhost")


def parse_networks(values):
    """CIDR strings or addresses to ``ip_network`` objects (host bits allowed); raises ``ValueError``.

    The one parser of network lists: banned repository networks
    (``RepoPolicy``) and trusted proxies (``AnonymousAuthenticator``).
    """
    return [ipaddress.ip_network(v, strict=False) for v in values]
