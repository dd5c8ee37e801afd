"""Run one build pod to completion: create or attach, stream its log, clean up.

The pod manifest comes from :func:`binder_spawner.build.build_pod_manifest`;
its name is derived from the image, so the first launch of an image creates
the pod and every other launch (concurrent, or after a hub restart) gets 409
from the API server and attaches to the same pod: one build, many watchers.

Every Kubernetes call goes through :class:`~binder_spawner.kuberetry.ApiRetry`
(bounded, retried through API blips, :class:`ClusterUnavailable` after its
deadline). The pod's state is followed with a watch that resumes from the
last resourceVersion after a dropped connection and lists again after a 410;
its log is followed and, if the connection drops while the build runs,
reopened without repeating the lines already shown. The build as a whole is
bounded by ``build_timeout``, after which the pod is deleted.

Launches of one hub process that wait for the same build share one follower
(:class:`_SharedBuild`): one create, one watch and one log stream per build
whatever the number of launches; each launch gets every progress event, from
the start. :data:`WATCHED` counts the launches of this hub process that wait
for each build pod, so that :mod:`binder_spawner.orphans` can remove the
builds nobody waits for (e.g. after a hub restart).
"""

from __future__ import annotations

import asyncio
import collections
import json

from kubernetes_asyncio.client.rest import ApiException

from .build import parse_log_line, pod_outcome
from .kuberetry import ApiRetry, is_retryable
from .retry import backoff

#: how many log lines a failure message keeps
TAIL_LINES = 10

#: (namespace, pod name) -> how many launches of this process wait for that build
WATCHED = collections.Counter()

#: progress events a launch that joins a running build is shown again, at most
REPLAYED_EVENTS = 2000


class _SharedBuild:
    """The follower of one build pod that the launches of this process share.

    The first launch's :class:`BuildPod` runs the build (``task``); every
    launch, the first included, is a listener of its progress events, and a
    launch that joins later first gets the events so far.
    """

    #: (namespace, pod name) -> the running _SharedBuild
    running = {}

    def __init__(self):
        self.listeners = []
        self.history = collections.deque(maxlen=REPLAYED_EVENTS)
        self.task = None

    def emit(self, phase, message):
        self.history.append((phase, message))
        for listener in list(self.listeners):
            listener(phase, message)

    def join(self, listener):
        for event in self.history:
            listener(*event)
        self.listeners.append(listener)

    def leave(self, listener):
        self.listeners.remove(listener)
        if not self.listeners and not self.task.done():
            # nobody waits any more: stop following (the orphan sweeper
            # deletes a build pod nobody waits for)
            self.task.cancel()


class BuildFailed(Exception):
    """The build pod failed or could not run: ``reason`` and the last log lines."""

    def __init__(self, reason, lines=()):
        super().__init__(reason)
        self.reason = reason
        self.lines = list(lines)


class BuildTimedOut(Exception):
    """The build took longer than the build timeout and was stopped."""

    def __init__(self, timeout, lines=()):
        super().__init__(f"build took longer than {timeout} s")
        self.timeout = timeout
        self.lines = list(lines)


def _status_error(response):
    """An ApiException for a streamed (``_preload_content=False``) non-2xx answer."""
    error = ApiException(status=response.status, reason=response.reason)
    error.headers = response.headers
    return error


class BuildPod:
    """One build pod in ``namespace``, driven through ``api`` (a ``CoreV1Api``).

    ``emit(phase, message)`` receives progress: ``waiting`` while the pod is
    pending, one ``building``/``pushing`` event per log line, ``built`` at
    the end. ``image_exists()`` is awaited when the pod disappeared under us
    (another launch cleaned up a finished build) to tell success from failure.
    ``retry`` is the :class:`ApiRetry` of every call (default: ``request_timeout``
    per attempt, ``api_deadline`` seconds per outage).
    """

    def __init__(
        self,
        api,
        namespace,
        manifest,
        *,
        log,
        emit,
        image_exists,
        request_timeout=10,
        api_deadline=120,
        watch_timeout=60,
        poll_interval=0.25,
        retry=None,
    ):
        self.api = api
        self.namespace = namespace
        self.manifest = manifest
        self.name = manifest["metadata"]["name"]
        self.log = log
        self.emit = emit
        self.image_exists = image_exists
        self.watch_timeout = watch_timeout
        self.poll_interval = poll_interval
        self.retry = retry or ApiRetry(
            request_timeout=request_timeout, deadline=api_deadline, log=log
        )
        self.request_timeout = self.retry.request_timeout
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.attached = False
        self._reported = set()

    @property
    def ref(self):
        return f"{self.namespace}/{self.name}"

    @property
    def key(self):
        return (self.namespace, self.name)

    async def run(self, build_timeout):
        """Build, or wait for the running build; returns when the image is pushed.

        A launch of this process already following the same build pod is
        joined instead: its progress events reach this launch too, and its
        outcome is this launch's.
        """
        WATCHED[self.key] += 1
        listener = self.emit
        shared = _SharedBuild.running.get(self.key)
        if shared is None or shared.task.done():
            shared = _SharedBuild.running[self.key] = _SharedBuild()
            self.emit = shared.emit
            shared.task = asyncio.ensure_future(self._run_bounded(build_timeout))
        else:
            self.attached = True
            self.log.info("Build pod %s is followed by another launch, joining it", self.ref)
            listener("waiting", "Found a build of this image in progress, attaching to it")
        shared.join(listener)
        try:
            await asyncio.shield(shared.task)
        finally:
            shared.leave(listener)
            if shared.task.done() and _SharedBuild.running.get(self.key) is shared:
                del _SharedBuild.running[self.key]
            WATCHED[self.key] -= 1
            if WATCHED[self.key] <= 0:
                del WATCHED[self.key]

    async def _run_bounded(self, build_timeout):
        try:
            await asyncio.wait_for(self._run(), build_timeout)
        except asyncio.TimeoutError:
            self.log.error("Build pod %s exceeded %s s, deleting it", self.ref, build_timeout)
            await self.delete()
            raise BuildTimedOut(build_timeout, self.tail) from None

    async def _run(self):
        await self.create()
        pod = await self.wait_started()
        if pod is not None:
            await self.stream_log()
            pod = await self.wait_finished()
        if pod is None:
            # cleaned up by another launch that watched the same build
            if await self.image_exists():
                self.emit("built", "Built image, launching...")
                return
            raise BuildFailed("the build pod disappeared before the image was pushed", self.tail)
        finished, succeeded, reason = pod_outcome(pod)
        await self.delete()
        if not succeeded:
            raise BuildFailed(reason or "the build failed", self.tail)
        self.emit("built", "Built image, launching...")

    async def _create_pod(self):
        """Create the pod; True if this call created it, False on 409 (it exists).

        A create retried after a lost answer may find the pod its first try made:
        that is a 409 too, and attaching to it is right either way.
        """
        try:
            await self.retry.call(
                self.api.create_namespaced_pod,
                self.namespace,
                self.manifest,
                what=f"create build pod {self.ref}",
            )
        except ApiException as e:
            if e.status != 409:
                raise
            return False
        return True

    async def create(self):
        if await self._create_pod():
            self.log.info("Created build pod %s", self.ref)
            self.emit("waiting", "Waiting for the build to start")
            return
        pod = await self.read()
        finished, succeeded, reason = pod_outcome(pod)
        if pod is None or (finished and not succeeded):
            # a failed build left behind (e.g. the hub stopped before cleaning
            # up): this launch tries again
            self.log.info("Replacing finished build pod %s (%s)", self.ref, reason)
            await self.delete()
            await self.wait_gone()
            await self._create_pod()
            self.log.info("Created build pod %s", self.ref)
            self.emit("waiting", "Waiting for the build to start")
            return
        self.attached = True
        self.log.info("Build pod %s exists, attaching to it", self.ref)
        self.emit("waiting", "Found a build of this image in progress, attaching to it")

    async def read(self):
        """The pod as an API dict, or None if it is gone."""
        pod, _ = await self._list()
        return pod

    async def _list(self):
        """(pod dict or None, the list's resourceVersion): where a watch starts."""
        response = await self.retry.call(
            self.api.list_namespaced_pod,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            what=f"read build pod {self.ref}",
        )
        items = response.items or []
        pod = self.api.api_client.sanitize_for_serialization(items[0]) if items else None
        return pod, response.metadata.resource_version

    async def follow(self, done):
        """Watch the pod until ``done(pod)``; returns the pod, or None once it is gone.

        The watch resumes from the last resourceVersion when its connection
        ends or drops, and lists again after a 410 (version too old) or a
        failed reconnect; the list is retried up to the API deadline.
        """
        version = None
        failures = 0
        while True:
            if version is None:
                pod, version = await self._list()
                if pod is None or done(pod):
                    return pod
                self._report_waiting(pod)
            try:
                async for type_, obj in self._watch(version):
                    failures = 0
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if type_ == "BOOKMARK":
                        continue
                    if type_ == "DELETED":
                        return None
                    if done(obj):
                        return obj
                    self._report_waiting(obj)
            except ApiException as e:
                if e.status == 410:
                    self.log.debug("Watch of build pod %s expired, listing again", self.ref)
                    version = None
                    continue
                if not is_retryable(e):
                    raise
                failures += 1
                version = None
            except Exception as e:
                if not is_retryable(e):
                    raise
                # a dropped connection: resume from the last version seen
                failures += 1
                self.log.debug("Watch of build pod %s dropped (%s), resuming", self.ref, e)
            if failures:
                await asyncio.sleep(backoff(failures - 1))

    async def _watch(self, version):
        """Events ``(type, object)`` of one watch request, from ``version``."""
        response = await self._open(
            self.api.list_namespaced_pod,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=version,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=int(self.watch_timeout),
            _preload_content=False,
            # the whole stream is bounded: a stalled watch ends and is resumed
            _request_timeout=self.watch_timeout + self.request_timeout,
            what=f"watch build pod {self.ref}",
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("reason"))
                yield event.get("type"), obj
        finally:
            response.release()

    async def _open(self, method, *args, what, **kwargs):
        """Open a streamed answer (``_preload_content=False``), retried like any call.

        The client raises no ApiException for a streamed answer: a non-2xx
        status is turned into one here, so outages are retried and answers raised.
        """

        async def attempt():
            response = await method(*args, **kwargs)
            if response.status >= 300:
                error = _status_error(response)
                response.release()
                raise error
            return response

        kwargs.setdefault("_request_timeout", self.request_timeout)
        return await self.retry.run(attempt, what=what)

    def _report_waiting(self, pod):
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason")
            if why and why not in self._reported:
                self._reported.add(why)
                self.emit("waiting", f"Build pod: {why}")

    @staticmethod
    def _started(pod):
        status = pod.get("status") or {}
        if status.get("phase") in ("Running", "Succeeded", "Failed"):
            return True
        return pod_outcome(pod)[0]

    async def wait_started(self):
        """Until the container runs or the pod ended; None if the pod is gone."""
        return await self.follow(self._started)

    async def wait_finished(self):
        """Until the pod has ended (the log stream closes a moment before)."""
        return await self.follow(lambda pod: pod_outcome(pod)[0])

    async def stream_log(self):
        """Follow the container's log, one progress event per line.

        A log connection that drops is reopened (the log of a finished
        container can still be read), and one that ends while the build
        still runs too; the lines already shown are skipped.
        """
        seen = 0
        while True:
            result = await self._stream_log_once(seen)
            if result is None:
                return
            seen, dropped = result
            if not dropped:
                pod = await self.read()
                if pod is None or pod_outcome(pod)[0]:
                    return
            self.log.info("Log of build pod %s ended early, reopening it", self.ref)
            await asyncio.sleep(self.poll_interval)

    async def _stream_log_once(self, skip):
        """Read the log from its start, emitting lines after the first ``skip``.

        Returns (how many lines were read, whether the connection dropped),
        or None when there is no log to read.
        """
        try:
            response = await self._open(
                self.api.read_namespaced_pod_log,
                self.name,
                self.namespace,
                container="builder",
                follow=True,
                _preload_content=False,
                # the stream lasts as long as the build: only the connection is bounded
                _request_timeout=None,
                what=f"read the log of build pod {self.ref}",
            )
        except ApiException as e:
            if e.status in (400, 403, 404):
                # not started, gone, or no pods/log permission: the build goes on unseen
                self.log.warning("No log for build pod %s: %s", self.ref, e.reason)
                return None
            raise
        count = 0
        dropped = False
        try:
            async for raw in response.content:
                count += 1
                if count <= skip:
                    continue
                phase, message = parse_log_line(raw)
                if not message:
                    continue
                self.tail.append(message)
                if phase == "failed":
                    self.emit("building", message)
                else:
                    self.emit(phase, message)
        except Exception as e:
            if not is_retryable(e):
                raise
            self.log.warning("Log of build pod %s dropped: %s", self.ref, e)
            dropped = True
        finally:
            response.release()
        return count, dropped

    async def wait_gone(self):
        await self.follow(lambda pod: False)

    async def delete(self):
        """Delete the build pod; a pod that is already gone is fine."""
        try:
            await self.retry.call(
                self.api.delete_namespaced_pod,
                self.name,
                self.namespace,
                grace_period_seconds=0,
                what=f"delete build pod {self.ref}",
            )
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not delete build pod %s: %s", self.ref, e.reason)
            return
        self.log.info("Deleted build pod %s", self.ref)
