"""Watches on the object store: per-watch queues, selector transitions, bookmarks."""

import asyncio
import collections

from .util import clone

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


Change = collections.namedtuple("Change", "rv resource type obj old")


class Watch:
    """One watch: a queue of ``(type, object)`` pairs fed by the store.

    ``async for event in watch`` yields ``{"type", "object"}`` dicts (copies).
    The HTTP layer uses :meth:`next_raw`, which can also time out and emit
    bookmarks. ``close()`` ends the iteration.
    """

    def __init__(self, store, resource, namespace, selector, allow_bookmarks=False):
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.selector = selector
        self.allow_bookmarks = allow_bookmarks
        self.queue = asyncio.Queue()
        self.closed = False

    def _offer(self, change):
        if self.closed:
            return
        obj, old = change.obj, change.old
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return
        if not self.selector:
            self.queue.put_nowait((change.type, obj))
            return
        # An object that starts or stops matching the selector is ADDED or
        # DELETED for this watcher (apiserver cacher.go, watchCacheEvent).
        now = self.selector.matches(obj)
        before = old is not None and self.selector.matches(old)
        if change.type == DELETED:
            if now or before:
                self.queue.put_nowait((DELETED, obj))
        elif now and before:
            self.queue.put_nowait((MODIFIED, obj))
        elif now:
            self.queue.put_nowait((ADDED, obj))
        elif before:
            self.queue.put_nowait((DELETED, obj))

    def close(self):
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)
            self.store._watches[self.resource].discard(self)

    async def next_raw(self, timeout=None):
        """The next ``(type, obj)`` (the stored object: do not mutate), or None when closed.

        With ``timeout``: a BOOKMARK if bookmarks are allowed, else ``("TIMEOUT", None)``.
        """
        try:
            item = (
                await asyncio.wait_for(self.queue.get(), timeout)
                if timeout
                else await self.queue.get()
            )
        except asyncio.TimeoutError:
            if self.allow_bookmarks:
                return BOOKMARK, self.store.bookmark_object(self.resource)
            return "TIMEOUT", None
        if item is None:
            self.closed = True
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.next_raw()
        if item is None:
            raise StopAsyncIteration
        return {"type": item[0], "object": clone(item[1])}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
