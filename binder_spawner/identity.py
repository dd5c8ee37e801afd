"""Pure helpers of the anonymous authenticator: names, client addresses, rate limits, redirects.

Nothing here does I/O or imports JupyterHub, so every rule is unit-tested
directly (``tests/test_identity.py``); ``auth/authenticator.py`` and ``auth/handlers.py``
wire them into the hub.
"""

import ipaddress
import re
import secrets
import string
import time
from collections import OrderedDict, deque
from urllib.parse import parse_qs, unquote, urlsplit

from . import tcptable
from .querydata import first_value

# lowercase letters and digits: names stay valid JupyterHub "safe slugs"
# (jupyterhub 6.1 ``slugs.is_valid_safe_slug``) and Kubernetes label values
NAME_ALPHABET = string.ascii_lowercase + string.digits

# 10 characters of 36 symbols: ~51 bits, not guessable, still readable
RANDOM_LENGTH = 10

# the query parameters of a launch link that name the repository; JupyterHub 5+
# also accepts the ``opt-`` prefixed form for user options (``SpawnHandler._get_user_options``)
REPO_PARAMS = ("repo", "opt-repo")

# loopback: where configurable-http-proxy connects from when it runs on the hub's
# machine (local mode). Private networks are not trusted by default: on a LAN,
# visitors come from them too (see AnonymousAuthenticator.trusted_proxy_networks)
DEFAULT_TRUSTED_NETWORKS = ("127.0.0.0/8", "::1/128")

# proxies that append to X-Forwarded-For in front of the hub: configurable-http-proxy
DEFAULT_TRUSTED_HOPS = 1

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def safe_log(value, max_length=200):
    """``repr`` of an untrusted value, shortened, for log lines.

    Same idea as ``jupyterhub.utils.safe_log``, which JupyterHub 5.5 lacks.
    """
    text = repr(value)
    if len(text) > max_length:
        text = text[: max_length - 2] + " …"
    return text


def slugify(value, max_length=12):
    """A short lowercase slug of ``value``: letters, digits and single hyphens.

    Starts with a letter and ends with a letter or digit, or is ``""``.
    """
    words = re.findall(r"[a-z0-9]+", (value or "").lower())
    slug = "-".join(words)[:max_length].strip("-")
    slug = re.sub(r"^[0-9-]+", "", slug)
    return slug


def repo_slug(repo, max_length=16):
    """A readable slug for a repository reference: its last meaningful path part.

    ``https://github.com/org/my_repo.git`` -> ``my-repo``; ``gh/org/repo/main``
    (a provider spec, whose last part is the ref) -> ``repo``; ``""`` when
    nothing usable is left.
    """
    if not repo:
        return ""
    repo = repo.strip()
    if "://" in repo:
        path = unquote(urlsplit(repo).path)
        parts = [p for p in path.split("/") if p]
    else:
        parts = [p for p in repo.split("/") if p]
        # a provider spec "gh/org/repo/ref": drop the provider and the ref
        if len(parts) >= 4 and parts[0] in ("gh", "gl", "git", "gist"):
            parts = parts[:-1]
    while parts:
        candidate = parts.pop()
        if candidate.endswith(".git"):
            candidate = candidate[: -len(".git")]
        slug = slugify(candidate, max_length)
        if slug:
            return slug
    return ""


def random_suffix(length=RANDOM_LENGTH):
    """``length`` random lowercase letters and digits from a cryptographic source."""
    return "".join(secrets.choice(NAME_ALPHABET) for _ in range(length))


def anonymous_name(hint="", prefix="", fallback="binder", length=RANDOM_LENGTH):
    """A new readable, unguessable name: ``<prefix><slug>-<random>``.

    ``hint`` is usually the repository of the launch link (see :func:`repo_slug`).
    """
    slug = repo_slug(hint) or fallback
    return f"{prefix}{slug}-{random_suffix(length)}"


def launch_repo(url):
    """The repository named in a launch URL's query (``repo`` or ``opt-repo``), or ``""``."""
    query = parse_qs(urlsplit(url or "").query)
    return first_repo_param(query)


def first_repo_param(query):
    """The first repository value in a parsed query (``{name: [values]}``), or ``""``."""
    for key in REPO_PARAMS:
        value = first_value(query.get(key))
        if value:
            return value
    return ""


def _parse_ip(value):
    value = (value or "").strip()
    # "[2001:db8::1]:443" or "192.0.2.1:1234" as some proxies write them
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1 and "." in value:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address


def client_address(peer, forwarded_for, trusted_networks, hops=DEFAULT_TRUSTED_HOPS):
    """The address of the client that made a request, as far as it can be trusted.

    ``peer`` is the address of the TCP connection to the hub; ``forwarded_for``
    the ``X-Forwarded-For`` header values in order. Each proxy appends the
    address it was connected from to the header (configurable-http-proxy's
    ``xfwd``, an ingress controller), so the rightmost entries were written by
    the hub's own proxies and everything left of them by the client.

    The header is read only when the peer is in ``trusted_networks`` (a proxy
    of the hub's own deployment), from the right, at most ``hops`` entries
    (one per proxy in front of the hub), and past an entry only when that
    entry is itself in ``trusted_networks``. A client, even one inside a
    trusted network, can therefore never choose its address: the entry its
    first proxy appended is the furthest one read. Returns the address as a
    string (``peer`` unchanged if it is not an IP address).
    """
    current = _parse_ip(peer)
    if current is None:
        return peer or ""
    entries = []
    for header in forwarded_for or ():
        entries.extend(part for part in header.split(",") if part.strip())

    def trusted(address):
        return any(address in network for network in trusted_networks)

    for _ in range(max(hops, 0)):
        if not entries or not trusted(current):
            break
        candidate = _parse_ip(entries.pop())
        if candidate is None:
            # a garbled entry: stop at the last address we could trust
            break
        current = candidate
    return str(current)


def socket_owner(proc_net_tables, local, remote):
    """The uid of this machine's TCP socket from ``local`` to ``remote``, or None.

    ``proc_net_tables`` are the texts of ``/proc/net/tcp`` and ``/proc/net/tcp6``;
    ``local`` and ``remote`` are ``(address, port)``. For a connection to the
    hub, ``local`` is the peer the hub sees and ``remote`` the hub's own
    address: the answer is the uid of the process that connected, None when it
    is on another machine (or its socket is already gone).
    """
    wanted = (_parse_ip(local[0]), int(local[1])), (_parse_ip(remote[0]), int(remote[1]))
    for found_local, found_remote, _, uid in tcptable.sockets(proc_net_tables):
        if (found_local, found_remote) == wanted:
            return uid
    return None


def believes_forwarded_for(owner, own_uid, peer_runs_a_server):
    """Whether a peer in a trusted network may say who the client is (``X-Forwarded-For``).

    Code in a session can connect to the hub directly, from a trusted network:
    in local mode every sandbox shares the hub's loopback, on Kubernetes user
    pods reach the hub from the pod network. Its header must not choose the
    client address. ``owner`` is the uid of the peer's socket when the peer is
    on the hub's machine (:func:`socket_owner`): only the hub's own user (the
    proxy the hub started) is believed. A peer on another machine is believed
    unless it is the address of one of the hub's servers (``peer_runs_a_server``).
    """
    if owner is not None:
        return owner == own_uid
    return not peer_runs_a_server


def address_bucket(address, ipv6_prefix=64):
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its ``/ipv6_prefix``.

    One IPv6 client usually holds a whole /64 and can pick any address in it.
    """
    parsed = _parse_ip(address)
    if parsed is None:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))
    return str(parsed)


class SlidingWindowLimiter:
    """At most ``limit`` events per ``window`` seconds per key, in memory.

    ``hit(key)`` records an event if allowed and returns ``(True, 0)``, or
    returns ``(False, retry_after_seconds)`` without recording. Keys whose
    events have all expired are dropped, and at most ``max_keys`` keys are
    kept (the least recently used go first), so memory stays bounded under
    a flood of addresses. ``limit <= 0`` disables the limit.
    """

    def __init__(self, limit, window=60.0, max_keys=100_000, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._events = OrderedDict()

    def _expire(self, now):
        horizon = now - self.window
        stale = [key for key, q in self._events.items() if not q or q[-1] <= horizon]
        for key in stale:
            del self._events[key]

    def usage(self, key, now=None):
        """Events of ``key`` inside the current window."""
        now = self.clock() if now is None else now
        q = self._events.get(key)
        if not q:
            return 0
        return sum(1 for t in q if t > now - self.window)

    def hit(self, key, now=None):
        if self.limit <= 0:
            return True, 0
        now = self.clock() if now is None else now
        q = self._events.get(key)
        if q is None:
            if len(self._events) >= self.max_keys:
                self._expire(now)
                while len(self._events) >= self.max_keys:
                    self._events.popitem(last=False)
            q = self._events[key] = deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            retry_after = max(1, int(q[0] + self.window - now + 0.999))
            return False, retry_after
        q.append(now)
        self._events.move_to_end(key)
        return True, 0


def safe_next_url(next_url, base_url="/"):
    """Stricter checks for a ``next`` URL that JupyterHub's own check already accepted.

    JupyterHub (``BaseHandler._validate_next_url``, 5.5 and 6.1) turns a URL
    on its own host into a path and rejects anything still naming a host.
    This adds what it lets through: control characters and spaces (browsers
    strip tabs and newlines, so ``/\\t/evil`` becomes ``//evil``), dot
    segments (also percent-encoded) that climb out of the hub, and paths on
    the same host outside the hub's ``base_url``. Returns the URL or ``""``.
    """
    if not next_url:
        return ""
    if _CONTROL_OR_SPACE.search(next_url) or _CONTROL_OR_SPACE.search(unquote(next_url)):
        return ""
    if not next_url.startswith("/") or next_url.startswith("//"):
        return ""
    parts = urlsplit(next_url)
    if parts.scheme or parts.netloc:
        return ""
    path = parts.path
    decoded = unquote(path)
    if "\\" in decoded or decoded.startswith("//"):
        return ""
    segments = decoded.split("/")
    if any(segment in (".", "..") for segment in segments):
        return ""
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    if not (decoded + "/").startswith(base):
        return ""
    return next_url
