"""This machine's TCP sockets, as the kernel lists them in ``/proc/net/tcp`` and ``tcp6``.

Local mode's sandboxes share the host's network, so who owns a socket (its
uid) is how the hub tells a sandbox from itself: who listens on a server's
port (:func:`binder_spawner.sandbox.listening_uids`), who connected to the
hub (:func:`binder_spawner.identity.socket_owner`). :func:`read_tables` reads
the tables; :func:`sockets` parses them and does no I/O.
"""

import ipaddress
import os
import sys

#: the state column of a listening socket
LISTEN = "0A"


def read_tables(net_dir="/proc/net"):
    """The texts of ``tcp`` and ``tcp6`` in ``net_dir`` (a table that cannot be read is left out)."""
    tables = []
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(net_dir, name)) as f:
                tables.append(f.read())
        except OSError:
            continue
    return tables


def _address(text):
    """``(address, port)`` of an address field (``0100007F:1F91``).

    The kernel prints each 32-bit word of the address in host byte order.
    """
    hex_address, _, hex_port = text.partition(":")
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address, int(hex_port, 16)


def sockets(tables):
    """``(local, remote, state, uid)`` of every socket in ``tables``.

    ``local`` and ``remote`` are ``(ipaddress, port)``; an IPv4-mapped IPv6
    address is given as IPv4. Lines that do not parse are skipped.
    """
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                yield _address(fields[1]), _address(fields[2]), fields[3], int(fields[7])
            except ValueError:
                continue
