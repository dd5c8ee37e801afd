"""Per-repository and total instance limits, and the reservation store.

The pure part is :func:`decide`: given the rules and the current counts, may
one more server of a repository start? :class:`ReservationStore` keeps the
slots: reservations made by spawners through the REST API plus the pending
and running servers observed on the hub (and in the cluster). All of its
methods are synchronous and the service runs one event loop, so a decision
and the slot it grants are taken together: concurrent launches cannot
overshoot a limit.

A slot is identified by (user, server); reserving it again is idempotent.
Only *admitted* slots count against the limits: those a reservation granted,
servers the hub shows running (ready), and, when the store is rebuilt after a
restart, pending servers in the order they started as far as the limits
allow. A pending server seen on the hub before its spawner asked is only
*noted*: its own reservation decides, so a server that started while the
repository was full is refused, not counted as already there.

A reservation the hub never shows as a server expires after ``ttl``
seconds; a slot whose server the hub showed and no longer shows is dropped
at the next reconciliation. After a restart the store is rebuilt from the
hub before the service answers reservations, so a restart neither leaks
slots nor admits more than a limit allows.
"""

import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta

from .utils import isoformat


@dataclass(frozen=True)
class LimitRules:
    """The configured limits: ``per_repo`` (0 = none), ``overrides`` and ``total`` (0 = none).

    ``overrides`` maps a regular expression, matched in full and
    case-insensitively against a repo key such as ``gh/org/repo``, to the
    limit of matching repositories; the highest matching limit wins.
    """

    per_repo: int = 100
    overrides: tuple = ()
    total: int = 0

    @classmethod
    def from_config(cls, per_repo, overrides, total):
        compiled = tuple((re.compile(p, re.IGNORECASE), int(n)) for p, n in overrides.items())
        return cls(per_repo=int(per_repo), overrides=compiled, total=int(total))

    def repo_limit(self, repo):
        matching = [n for pattern, n in self.overrides if pattern.fullmatch(repo)]
        return max(matching) if matching else self.per_repo


@dataclass(frozen=True)
class Decision:
    """Whether one more server may start, and if not which limit refused it."""

    admitted: bool
    kind: str = ""  # "repo" or "total" when refused
    limit: int = 0
    usage: int = 0

    def message(self, repo):
        if self.admitted:
            return ""
        if self.kind == "total":
            return (
                f"This hub already runs {self.usage} Binder sessions, its limit. "
                "Try again in a few minutes."
            )
        return (
            f"{repo} already has {self.usage} running sessions, the limit for this "
            "repository. Try again in a few minutes."
        )


def decide(rules, repo, repo_usage, total_usage):
    """May one more server of ``repo`` start, with ``repo_usage`` and ``total_usage`` others?"""
    if rules.total and total_usage >= rules.total:
        return Decision(False, "total", rules.total, total_usage)
    limit = rules.repo_limit(repo)
    if limit and repo_usage >= limit:
        return Decision(False, "repo", limit, repo_usage)
    return Decision(True, limit=limit, usage=repo_usage)


def reservation_id(user, server):
    """The id of the (user, server) slot: stable, so it survives a service restart."""
    return hashlib.sha256(f"{user}\0{server}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Observed:
    """A pending or running server as the hub lists it."""

    repo: str | None  # repo key, None if its user_options name no repository
    ready: bool = False
    started: object = None  # datetime or None


@dataclass
class Slot:
    """One server: reserved by a spawner, observed on the hub, or both."""

    user: str
    server: str
    repo: str
    created: object  # datetime
    expires_at: object  # datetime: only matters while never observed
    updated: object  # datetime of the last reserve or observation
    admitted: bool = False  # counts against the limits
    observed: bool = False
    seen: bool = False  # observed on the hub at least once
    id: str = field(init=False)

    def __post_init__(self):
        self.id = reservation_id(self.user, self.server)

    @property
    def key(self):
        return (self.user, self.server)

    def model(self):
        return {
            "id": self.id,
            "user": self.user,
            "server": self.server,
            "repo": self.repo,
            "expires_at": isoformat(self.expires_at),
        }


class LimitExceeded(Exception):
    """Raised by :meth:`ReservationStore.reserve` when a limit refuses the slot."""

    def __init__(self, decision, repo, shown=None):
        """``shown``: the repository as the visitor wrote it, for the message (else ``repo``)."""
        super().__init__(decision.message(shown or repo))
        self.decision = decision
        self.repo = repo
        self.message = decision.message(shown or repo)


class ReservationStore:
    """Slots per (user, server) with per-repo counts. Synchronous: see the module docstring."""

    def __init__(self, rules, ttl=900):
        self.rules = rules
        self.ttl = ttl
        self._slots = {}
        self._by_id = {}
        self._counts = {}
        self._admitted = 0

    # bookkeeping -------------------------------------------------------

    def _count(self, slot, delta):
        if not slot.admitted:
            return
        self._admitted += delta
        n = self._counts.get(slot.repo, 0) + delta
        if n:
            self._counts[slot.repo] = n
        else:
            self._counts.pop(slot.repo, None)

    def _add(self, slot):
        self._slots[slot.key] = slot
        self._by_id[slot.id] = slot
        self._count(slot, +1)

    def _remove(self, slot):
        del self._slots[slot.key]
        self._by_id.pop(slot.id, None)
        self._count(slot, -1)

    def _admit(self, slot):
        if not slot.admitted:
            slot.admitted = True
            self._count(slot, +1)

    def _set_repo(self, slot, repo):
        if slot.repo != repo:
            self._count(slot, -1)
            slot.repo = repo
            self._count(slot, +1)

    def _decide(self, repo, exclude=None):
        repo_usage = self._counts.get(repo, 0)
        total_usage = self._admitted
        if exclude is not None and exclude.admitted:
            total_usage -= 1
            if exclude.repo == repo:
                repo_usage -= 1
        return decide(self.rules, repo, repo_usage, total_usage)

    # queries -------------------------------------------------------------

    def get(self, reservation_id):
        return self._by_id.get(reservation_id)

    def slot(self, user, server):
        return self._slots.get((user, server))

    def usage(self, now=None):
        """Admitted slots: ``{"total": n, "repos": {repo: n}}``."""
        if now is not None:
            self.expire(now)
        return {"total": self._admitted, "repos": dict(self._counts)}

    def __len__(self):
        return self._admitted

    # changes -------------------------------------------------------------

    def expire(self, now):
        """Drop reservations never observed on the hub whose time ran out; returns them."""
        expired = [s for s in self._slots.values() if not s.seen and s.expires_at <= now]
        for slot in expired:
            self._remove(slot)
        return expired

    def reserve(self, user, server, repo, now, seen=False):
        """Admit a slot for (user, server) and ``repo``, or raise :class:`LimitExceeded`.

        Returns ``(slot, created)``; reserving an admitted (user, server) and
        repo again returns the existing slot with its expiry renewed.
        ``seen``: the caller saw the server on the hub, so the slot is dropped
        by the first reconciliation that no longer lists it, instead of
        lasting ``ttl`` seconds.
        """
        self.expire(now)
        existing = self._slots.get((user, server))
        if existing is not None and existing.admitted and existing.repo == repo:
            existing.updated = now
            existing.expires_at = now + timedelta(seconds=self.ttl)
            existing.seen = existing.seen or seen
            return existing, False
        decision = self._decide(repo, exclude=existing)
        if not decision.admitted:
            raise LimitExceeded(decision, repo)
        slot = Slot(
            user=user,
            server=server,
            repo=repo,
            created=now,
            updated=now,
            expires_at=now + timedelta(seconds=self.ttl),
            admitted=True,
            seen=seen,
        )
        if existing is not None:
            slot.observed, slot.seen = existing.observed, existing.seen or seen
            self._remove(existing)
        self._add(slot)
        return slot, True

    def release(self, reservation_id):
        """Free a slot by id; returns the slot or None if there was none."""
        slot = self._by_id.get(reservation_id)
        if slot is not None:
            self._remove(slot)
        return slot

    def reconcile(self, observed, listed_at, now, initial=False):
        """Bring the slots in line with the servers the hub (and cluster) report.

        ``observed`` maps (user, server) of every pending or running server to
        an :class:`Observed`. Servers naming no repository are not Binder
        launches and are ignored. Running servers are admitted; pending ones
        are noted and wait for their reservation, except on the ``initial``
        rebuild after a start, when they are admitted in the order they
        started as far as the limits allow. ``listed_at`` is when the listing
        started: slots changed after it are left alone. Returns
        ``(added, dropped)`` lists of slots.
        """
        added, dropped, waiting = [], [], []
        for key, server in observed.items():
            slot = self._slots.get(key)
            if slot is None:
                if server.repo is None:
                    continue
                slot = Slot(
                    user=key[0],
                    server=key[1],
                    repo=server.repo,
                    created=now,
                    updated=listed_at,
                    expires_at=now + timedelta(seconds=self.ttl),
                )
                self._add(slot)
                added.append(slot)
            elif server.repo is not None:
                self._set_repo(slot, server.repo)
            slot.observed = slot.seen = True
            if server.ready:
                self._admit(slot)
            elif initial and not slot.admitted:
                waiting.append((server.started or now, key[0], key[1], slot))
        for *_, slot in sorted(waiting, key=lambda w: w[:3]):
            if self._decide(slot.repo).admitted:
                self._admit(slot)
        for key, slot in list(self._slots.items()):
            if key in observed:
                continue
            slot.observed = False
            if slot.updated >= listed_at:
                continue  # reserved after the listing started: it cannot be in it yet
            if slot.seen or slot.expires_at <= now:
                self._remove(slot)
                dropped.append(slot)
        return added, dropped
