"""Container log buffers of the object store: the kubelet writes, ``pods/log`` reads."""

import asyncio

from . import errors
from .resources import RESOURCES
from .util import micro_timestamp


class LogBuffer:
    def __init__(self):
        self.lines = []  # (timestamp string, text)
        self.closed = False
        self.followers = set()


class PodLogsMixin:
    """The log part of :class:`~tests.k8s.store.Store` (needs ``self._logs`` and ``self._internal``)."""

    def _log_key(self, namespace, pod, container):
        return (namespace, pod, container)

    def append_log(self, namespace, pod, container, line, when=None):
        """Add one line (without its newline) to a container's log."""
        buffer = self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())
        entry = (micro_timestamp(when), line)
        buffer.lines.append(entry)
        for queue in list(buffer.followers):
            queue.put_nowait(entry)

    def open_log(self, namespace, pod, container):
        """Mark a container as started: its (possibly empty) log can be read."""
        self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())

    def close_log(self, namespace, pod, container):
        """The container exited: followers reach the end of the log."""
        buffer = self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())
        buffer.closed = True
        for queue in list(buffer.followers):
            queue.put_nowait(None)
        buffer.followers.clear()

    def _drop_logs(self, namespace, pod):
        for key in [k for k in self._logs if k[:2] == (namespace, pod)]:
            buffer = self._logs.pop(key)
            for queue in buffer.followers:
                queue.put_nowait(None)

    def _log_buffer(self, namespace, pod, container):
        obj = self._internal(RESOURCES["pods"], namespace, pod)
        names = [c["name"] for c in obj["spec"].get("containers", [])]
        names += [c["name"] for c in obj["spec"].get("initContainers") or []]
        if container is None:
            if len(obj["spec"].get("containers", [])) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {pod}, choose one of: [{' '.join(names)}]"
                )
            container = names[0]
        elif container not in names:
            raise errors.bad_request(f"container {container} is not valid for pod {pod}")
        buffer = self._logs.get(self._log_key(namespace, pod, container))
        if buffer is None:
            raise errors.bad_request(
                f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
            )
        return buffer

    def read_log(self, namespace, pod, container=None, tail_lines=None):
        """``[(timestamp, line), ...]``; ApiError 400/404 as ``pods/log`` answers."""
        lines = self._log_buffer(namespace, pod, container).lines
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        return list(lines)

    async def follow_log(self, namespace, pod, container=None, tail_lines=None):
        """Yield ``(timestamp, line)`` until the container's log is closed or the pod is gone."""
        buffer = self._log_buffer(namespace, pod, container)
        lines = buffer.lines
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        backlog = list(lines)
        queue = asyncio.Queue()
        if buffer.closed:
            queue.put_nowait(None)
        else:
            buffer.followers.add(queue)
        try:
            for entry in backlog:
                yield entry
            while True:
                entry = await queue.get()
                if entry is None:
                    return
                yield entry
        finally:
            buffer.followers.discard(queue)
