"""Run one build pod to completion: create or attach, stream its log, clean up.

The pod manifest comes from :func:`binder_spawner.build.build_pod_manifest`;
its name is derived from the image, so the first launch of an image creates
the pod and every other launch (concurrent, or after a hub restart) gets 409
from the API server and attaches to the same pod: one build, many watchers.
Every Kubernetes call is bounded by ``request_timeout``; the build as a whole
by ``build_timeout``, after which the pod is deleted.
"""

from __future__ import annotations

import asyncio
import collections

from kubernetes_asyncio.client.rest import ApiException

from .build import parse_log_line, pod_outcome

#: how many log lines a failure message keeps
TAIL_LINES = 10


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


class BuildPod:
    """One build pod in ``namespace``, driven through ``api`` (a ``CoreV1Api``).

    ``emit(phase, message)`` receives progress: ``waiting`` while the pod is
    pending, one ``building``/``pushing`` event per log line, ``built`` at
    the end. ``image_exists()`` is awaited when the pod disappeared under us
    (another launch cleaned up a finished build) to tell success from failure.
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
        poll_interval=0.25,
    ):
        self.api = api
        self.namespace = namespace
        self.manifest = manifest
        self.name = manifest["metadata"]["name"]
        self.log = log
        self.emit = emit
        self.image_exists = image_exists
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.attached = False

    @property
    def ref(self):
        return f"{self.namespace}/{self.name}"

    async def run(self, build_timeout):
        """Build, or wait for the running build; returns when the image is pushed."""
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

    async def _call(self, method, *args, **kwargs):
        return await asyncio.wait_for(
            method(*args, _request_timeout=self.request_timeout, **kwargs),
            self.request_timeout,
        )

    async def create(self):
        try:
            await self._call(self.api.create_namespaced_pod, self.namespace, self.manifest)
        except ApiException as e:
            if e.status != 409:
                raise
            pod = await self.read()
            finished, succeeded, reason = pod_outcome(pod)
            if pod is None or (finished and not succeeded):
                # a failed build left behind (e.g. the hub stopped before cleaning
                # up): this launch tries again
                self.log.info("Replacing finished build pod %s (%s)", self.ref, reason)
                await self.delete()
                await self.wait_gone()
                await self._call(self.api.create_namespaced_pod, self.namespace, self.manifest)
                self.log.info("Created build pod %s", self.ref)
                self.emit("waiting", "Waiting for the build to start")
                return
            self.attached = True
            self.log.info("Build pod %s exists, attaching to it", self.ref)
            self.emit("waiting", "Found a build of this image in progress, attaching to it")
            return
        self.log.info("Created build pod %s", self.ref)
        self.emit("waiting", "Waiting for the build to start")

    async def read(self):
        """The pod as an API dict, or None if it is gone."""
        try:
            pod = await self._call(self.api.read_namespaced_pod, self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return self.api.api_client.sanitize_for_serialization(pod)

    async def wait_started(self):
        """Poll until the container runs or the pod ended; None if the pod is gone."""
        reported = set()
        while True:
            pod = await self.read()
            if pod is None:
                return None
            status = pod.get("status") or {}
            if status.get("phase") in ("Running", "Succeeded", "Failed"):
                return pod
            finished, _, reason = pod_outcome(pod)
            if finished:
                return pod
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                why = waiting.get("reason")
                if why and why not in reported:
                    reported.add(why)
                    self.emit("waiting", f"Build pod: {why}")
            await asyncio.sleep(self.poll_interval)

    async def stream_log(self):
        """Follow the container's log, one progress event per line."""
        try:
            response = await self.api.read_namespaced_pod_log(
                self.name,
                self.namespace,
                container="builder",
                follow=True,
                _preload_content=False,
            )
        except ApiException as e:
            if e.status in (400, 404):
                self.log.warning("No log for build pod %s: %s", self.ref, e.reason)
                return
            raise
        try:
            async for raw in response.content:
                phase, message = parse_log_line(raw)
                if not message:
                    continue
                self.tail.append(message)
                if phase == "failed":
                    self.emit("building", message)
                else:
                    self.emit(phase, message)
        finally:
            response.release()

    async def wait_finished(self):
        """Poll until the pod has ended (the log stream closes a moment before)."""
        while True:
            pod = await self.read()
            if pod is None:
                return None
            finished, _, _ = pod_outcome(pod)
            if finished:
                return pod
            await asyncio.sleep(self.poll_interval)

    async def wait_gone(self):
        while await self.read() is not None:
            await asyncio.sleep(self.poll_interval)

    async def delete(self):
        """Delete the build pod; a pod that is already gone is fine."""
        try:
            await self._call(
                self.api.delete_namespaced_pod,
                self.name,
                self.namespace,
                grace_period_seconds=0,
            )
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not delete build pod %s: %s", self.ref, e.reason)
            return
        self.log.info("Deleted build pod %s", self.ref)
