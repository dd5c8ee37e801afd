"""One pod on an emulated kubelet: pull, start, supervise, report, terminate.

The kubelet (tests/k8s/kubelet.py) creates a :class:`PodWorker` for each pod
bound to its node. The worker keeps the pod's ``status`` (phase, conditions,
``podIP``, ``containerStatuses``) and writes it through the store's status
subresource whenever it changes, as pkg/kubelet/status/status_manager.go does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
import uuid

from .catalog import bin_dir
from .errors import ApiError
from .runtime import (
    ConfigError,
    ContainerProcess,
    PullError,
    chown_tree,
    container_env,
    expand,
    security_ids,
    write_volume,
)
from .store import clone, timestamp

log = logging.getLogger(__name__)

PULL_BACKOFF = (10.0, 300.0)  # pkg/kubelet/images: 10s doubling to 300s
RESTART_BACKOFF = (10.0, 300.0)  # pkg/kubelet/kubelet.go: crash loop back-off
READINESS_POLL = 0.1  # seconds between readiness probe attempts (real time)


def probe_ready(probe: dict | None, pod_ip: str) -> bool:
    """One readiness probe attempt (tcpSocket or httpGet); no probe means ready.

    Blocking: run it in a thread. exec probes cannot be emulated and pass.
    """
    if not probe:
        return True
    if "tcpSocket" in probe:
        try:
            with socket.create_connection((pod_ip, int(probe["tcpSocket"]["port"])), timeout=1):
                return True
        except OSError:
            return False
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"{get.get('scheme', 'HTTP').lower()}://{pod_ip}:{get['port']}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return 200 <= response.status < 400
        except urllib.error.HTTPError as e:
            return 200 <= e.code < 400
        except OSError:
            return False
    return True


class Backoff:
    """Doubling delays from ``first`` to ``cap`` seconds, scaled by ``scale``."""

    def __init__(self, first, cap, scale):
        self.next, self.cap, self.scale = first, cap, scale

    def delay(self):
        value = self.next * self.scale
        self.next = min(self.next * 2, self.cap)
        return value


class PodWorker:
    """Runs one pod's containers and reports its status."""

    def __init__(self, kubelet, pod):
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.spec = pod["spec"]
        self.ip = None
        self.dir = kubelet.root / "pods" / self.uid
        self.mounts: dict[str, str] = {}  # volume name -> local folder
        self.processes: dict[str, ContainerProcess] = {}
        self.supervisors: dict[str, asyncio.Task] = {}
        self.statuses: dict[str, dict] = {}
        self.init_statuses: dict[str, dict] = {}
        self.phase = "Pending"
        self.conditions: dict[str, dict] = {}
        self.start_time = None
        self.grace = None
        self._terminate = asyncio.Event()
        self._task = None
        self._ready_tasks: dict[str, asyncio.Task] = {}

    @property
    def restart_policy(self):
        return self.spec.get("restartPolicy", "Always")

    # ------------------------------------------------------------ status

    def _condition(self, kind, status, reason=None):
        current = self.conditions.get(kind)
        value = "True" if status else "False"
        if current and current["status"] == value and current.get("reason") == reason:
            return
        condition = {"type": kind, "status": value, "lastTransitionTime": timestamp()}
        if reason:
            condition["reason"] = reason
        self.conditions[kind] = condition

    def _container_status(self, container, init=False):
        table = self.init_statuses if init else self.statuses
        status = table.get(container["name"])
        if status is None:
            status = table[container["name"]] = {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "waiting": {
                        "reason": "PodInitializing"
                        if init or self.spec.get("initContainers")
                        else "ContainerCreating"
                    }
                },
                "lastState": {},
            }
        return status

    def _waiting(self, container, reason, message=None, init=False):
        status = self._container_status(container, init)
        waiting = {"reason": reason}
        if message:
            waiting["message"] = message
        status["state"] = {"waiting": waiting}
        status["ready"] = False
        status["started"] = False
        self.publish()

    def publish(self):
        """Write the pod's status through the status subresource (404: already gone)."""
        ready = (
            bool(self.statuses)
            and all(s["ready"] for s in self.statuses.values())
            and self.phase == "Running"
        )
        self._condition("ContainersReady", ready, None if ready else "ContainersNotReady")
        self._condition("Ready", ready, None if ready else "ContainersNotReady")
        try:
            current = self.kubelet.store.get("pods", self.namespace, self.name)
        except ApiError:
            return
        if current["metadata"]["uid"] != self.uid:
            return
        status = clone(current.get("status") or {})
        status["phase"] = self.phase
        kept = [c for c in status.get("conditions") or [] if c["type"] not in self.conditions]
        status["conditions"] = kept + [clone(c) for c in self.conditions.values()]
        if self.ip:
            status["hostIP"] = self.kubelet.host_ip
            status["hostIPs"] = [{"ip": self.kubelet.host_ip}]
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.start_time:
            status["startTime"] = self.start_time
        status["containerStatuses"] = [
            clone(self._container_status(c)) for c in self.spec["containers"]
        ]
        if self.spec.get("initContainers"):
            status["initContainerStatuses"] = [
                clone(self._container_status(c, init=True)) for c in self.spec["initContainers"]
            ]
        try:
            self.kubelet.store.update(
                "pods",
                self.namespace,
                self.name,
                {"metadata": {"name": self.name}, "status": status},
                subresource="status",
            )
        except ApiError as e:
            if e.code != 404:
                log.warning(
                    "kubelet %s: status of %s/%s not written: %s",
                    self.kubelet.name,
                    self.namespace,
                    self.name,
                    e,
                )

    # ------------------------------------------------------------ lifecycle

    def start(self):
        self._task = asyncio.create_task(
            self._lifecycle(), name=f"pod {self.namespace}/{self.name}"
        )

    def request_termination(self, grace):
        if self.grace is None:
            self.grace = grace
            self._terminate.set()

    async def _lifecycle(self):
        try:
            self.ip = self.kubelet.network.allocate()
            self.start_time = timestamp()
            self._condition(
                "Initialized",
                not self.spec.get("initContainers"),
                None if not self.spec.get("initContainers") else "ContainersNotInitialized",
            )
            self.publish()
            run = asyncio.create_task(self._run())
            stop = asyncio.create_task(self._terminate.wait())
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not stop.done():
                await stop  # finished by itself: stay until deleted
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
            elif run.exception() is not None:
                log.error(
                    "kubelet %s: pod %s/%s failed",
                    self.kubelet.name,
                    self.namespace,
                    self.name,
                    exc_info=run.exception(),
                )
            await self._kill_all(self.grace or 0, events=True)
            if self.phase not in ("Succeeded", "Failed"):
                codes = [
                    s["state"].get("terminated", {}).get("exitCode", 137)
                    for s in self.statuses.values()
                ]
                self.phase = "Succeeded" if codes and not any(codes) else "Failed"
            self.publish()
            self._confirm_deletion()
        finally:
            await self.shutdown()

    def _confirm_deletion(self):
        try:
            self.kubelet.store.delete(
                "pods",
                self.namespace,
                self.name,
                grace_period_seconds=0,
                preconditions={"uid": self.uid},
            )
        except ApiError as e:
            if e.code not in (404, 409):
                log.warning(
                    "kubelet %s: deleting %s/%s failed: %s",
                    self.kubelet.name,
                    self.namespace,
                    self.name,
                    e,
                )

    async def shutdown(self):
        """Kill whatever still runs and release the pod's address and folder."""
        if self._task and not self._task.done() and asyncio.current_task() is not self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self.supervisors.values()) + list(self._ready_tasks.values()):
            task.cancel()
        for process in self.processes.values():
            with contextlib.suppress(Exception):
                await process.stop(0)
        self.processes.clear()
        if self.ip:
            self.kubelet.network.release(self.ip)
            self.ip = None
        self.kubelet.forget(self)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    async def _run(self):
        backoff = Backoff(*RESTART_BACKOFF, self.kubelet.time_scale)
        while True:
            try:
                self._prepare_volumes()
                break
            except ConfigError as e:
                # pkg/kubelet/volumemanager: the pod waits in ContainerCreating
                self.kubelet.record(
                    self.pod, "FailedMount", f"MountVolume.SetUp failed: {e}", "Warning"
                )
                await asyncio.sleep(backoff.delay())
        for container in self.spec.get("initContainers") or []:
            container = dict(container, _init=True)
            backoff = Backoff(*RESTART_BACKOFF, self.kubelet.time_scale)
            while True:
                await self._ensure_image(container, init=True)
                process = await self._start_retrying(container, init=True)
                code = await process.wait() if process else 128
                self._terminated(container, code, init=True)
                self.publish()
                if code == 0:
                    break
                if self.restart_policy == "Never":
                    self.phase = "Failed"
                    self._condition("Initialized", False, "ContainersNotInitialized")
                    self.publish()
                    return
                await self._crash_backoff(container, backoff, init=True)
        self._condition("Initialized", True)
        for container in self.spec["containers"]:
            self._waiting(container, "ContainerCreating")
        for container in self.spec["containers"]:
            await self._ensure_image(container)
        for container in self.spec["containers"]:
            process = await self._start_retrying(container)
            self.supervisors[container["name"]] = asyncio.create_task(
                self._supervise(container, process)
            )
        self.phase = "Running"
        self.publish()
        await asyncio.gather(*self.supervisors.values())
        codes = [s["state"]["terminated"]["exitCode"] for s in self.statuses.values()]
        self.phase = "Succeeded" if not any(codes) else "Failed"
        self.publish()

    # ------------------------------------------------------------ images

    async def _ensure_image(self, container, init=False):
        """Pull as ``imagePullPolicy`` says, retrying with back-off until it works."""
        kubelet, image = self.kubelet, container["image"]
        policy = container.get("imagePullPolicy") or "IfNotPresent"
        backoff = Backoff(*PULL_BACKOFF, kubelet.time_scale)
        while True:
            present = kubelet.has_image(image)
            if policy == "Never" and not present:
                message = f'Container image "{image}" is not present with pull policy of Never'
                kubelet.record(self.pod, "ErrImageNeverPull", message, "Warning", container)
                self._waiting(container, "ErrImageNeverPull", message, init)
                await asyncio.sleep(backoff.delay())
                continue
            if present and policy != "Always":
                kubelet.record(
                    self.pod,
                    "Pulled",
                    f'Container image "{image}" already present on machine',
                    container=container,
                )
                return
            kubelet.record(self.pod, "Pulling", f'Pulling image "{image}"', container=container)
            try:
                seconds, size = await kubelet.pull(image, kubelet.pull_secrets(self.pod))
            except PullError as e:
                kubelet.record(
                    self.pod,
                    "Failed",
                    f'Failed to pull image "{image}": {e.message}',
                    "Warning",
                    container,
                )
                kubelet.record(self.pod, "Failed", f"Error: {e.reason}", "Warning", container)
                self._waiting(container, e.reason, e.message, init)
                delay = backoff.delay()
                # the next sync finds the image in back-off (pkg/kubelet/images/image_manager.go)
                await asyncio.sleep(min(delay, 1.0 * kubelet.time_scale))
                message = f'Back-off pulling image "{image}"'
                kubelet.record(self.pod, "BackOff", message, container=container)
                kubelet.record(self.pod, "Failed", "Error: ImagePullBackOff", "Warning", container)
                self._waiting(container, "ImagePullBackOff", message, init)
                await asyncio.sleep(delay)
                continue
            kubelet.record(
                self.pod,
                "Pulled",
                f'Successfully pulled image "{image}" in {seconds:.3f}s ({seconds:.3f}s including waiting). '
                f"Image size: {size} bytes.",
                container=container,
            )
            return

    # ------------------------------------------------------------ containers

    def _prepare_volumes(self):
        store = self.kubelet.store
        for volume in self.spec.get("volumes") or []:
            name = volume["name"]
            folder = self.dir / "volumes" / name
            if "persistentVolumeClaim" in volume:
                # one folder per claim, shared by every pod that mounts it
                folder = (
                    self.kubelet.root.parent
                    / "claims"
                    / self.namespace
                    / volume["persistentVolumeClaim"]["claimName"]
                )
            folder.mkdir(parents=True, exist_ok=True)
            sources = []
            if "secret" in volume:
                sources.append(("secrets", volume["secret"].get("secretName"), volume["secret"]))
            if "configMap" in volume:
                sources.append(("configmaps", volume["configMap"].get("name"), volume["configMap"]))
            for projected in (volume.get("projected") or {}).get("sources") or []:
                if "secret" in projected:
                    sources.append(
                        ("secrets", projected["secret"].get("name"), projected["secret"])
                    )
                if "configMap" in projected:
                    sources.append(
                        ("configmaps", projected["configMap"].get("name"), projected["configMap"])
                    )
                if "serviceAccountToken" in projected:
                    write_volume(
                        folder,
                        {
                            projected["serviceAccountToken"][
                                "path"
                            ]: "emulated-service-account-token"
                        },
                    )
            for kind, obj_name, source in sources:
                try:
                    obj = store.get(kind, self.namespace, obj_name)
                except ApiError:
                    if source.get("optional"):
                        continue
                    raise ConfigError(f'{kind[:-1]} "{obj_name}" not found') from None
                data = (
                    {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                    if kind == "secrets"
                    else dict(obj.get("data") or {})
                )
                items = source.get("items")
                if items:
                    data = {
                        item.get("path", item["key"]): data[item["key"]]
                        for item in items
                        if item["key"] in data
                    }
                write_volume(folder, data)
            self.mounts[name] = str(folder)

    def _lookup(self, kind, name):
        try:
            return self.kubelet.store.get(kind, self.namespace, name)
        except ApiError:
            return None

    async def _start_container(self, container, init=False):
        """Create and start one container; None (and a terminated state) if it cannot start."""
        kubelet = self.kubelet
        entry = kubelet.catalog.lookup(container["image"])
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            folder = self.mounts.get(mount["name"])
            if folder:
                mounts[mount["mountPath"]] = os.path.join(folder, mount.get("subPath", ""))
        pod = clone(self.pod)
        pod.setdefault("status", {}).update(podIP=self.ip, hostIP=kubelet.host_ip)
        base = {
            "PATH": f"{bin_dir()}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "HOSTNAME": self.name,
            "LANG": "C.UTF-8",
            "KUBELET_EMULATOR_MOUNTS": json.dumps(mounts),
        }
        if kubelet.api_url:
            host, _, port = kubelet.api_url.split("://", 1)[-1].rstrip("/").rpartition(":")
            base.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port)
        base.update(entry.env if entry else {})
        try:
            env = container_env(pod, container, self._lookup, base)
        except ConfigError as e:
            kubelet.record(self.pod, "Failed", f"Error: {e}", "Warning", container)
            self._waiting(container, "CreateContainerConfigError", str(e), init)
            raise
        launch = kubelet.catalog.launch(entry, container, self.ip)
        argv = [expand(arg, env) for arg in launch.argv]
        env.update(launch.env)
        uid, gid, groups = security_ids(self.pod, container)
        if uid is None and entry is not None and entry.user is not None:
            uid = entry.user  # the image's USER
            gid = entry.group if gid is None else gid
        cwd = mounts.get(container.get("workingDir") or "", str(home))
        chown_tree(self.dir, uid, gid)
        status = self._container_status(container, init)
        status["containerID"] = f"emulated://{uuid.uuid4().hex}"
        status["imageID"] = kubelet.image_id(container["image"]) or status["imageID"]
        kubelet.store.open_log(self.namespace, self.name, container["name"])
        process = ContainerProcess(
            argv,
            env,
            cwd,
            uid=uid,
            gid=gid,
            groups=groups,
            on_line=lambda line, c=container["name"]: kubelet.store.append_log(
                self.namespace, self.name, c, line
            ),
        )
        kubelet.record(
            self.pod, "Created", f"Created container {container['name']}", container=container
        )
        try:
            await process.start()
        except OSError as e:
            message = f"failed to create containerd task: exec: {argv[0]!r}: {e.strerror or e}"
            kubelet.record(self.pod, "Failed", f"Error: {message}", "Warning", container)
            kubelet.store.append_log(self.namespace, self.name, container["name"], message)
            status["state"] = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": message,
                    "startedAt": timestamp(),
                    "finishedAt": timestamp(),
                    "containerID": status["containerID"],
                }
            }
            self.publish()
            return None
        self.processes[container["name"]] = process
        kubelet.record(
            self.pod, "Started", f"Started container {container['name']}", container=container
        )
        status["state"] = {"running": {"startedAt": timestamp()}}
        status["started"] = True
        if not init:
            probe = container.get("readinessProbe")
            if probe:
                self._ready_tasks[container["name"]] = asyncio.create_task(
                    self._probe(container, probe)
                )
            else:
                status["ready"] = True
        self.publish()
        return process

    async def _start_retrying(self, container, init=False):
        """Start a container, waiting out CreateContainerConfigError (a missing secret)."""
        backoff = Backoff(*RESTART_BACKOFF, self.kubelet.time_scale)
        while True:
            try:
                return await self._start_container(container, init)
            except ConfigError:
                await asyncio.sleep(backoff.delay())

    async def _probe(self, container, probe):
        await asyncio.sleep(probe.get("initialDelaySeconds", 0) * self.kubelet.time_scale)
        while not await asyncio.to_thread(probe_ready, probe, self.ip):
            await asyncio.sleep(READINESS_POLL)
        status = self._container_status(container)
        if "running" in status["state"]:
            status["ready"] = True
            self.publish()

    def _terminated(self, container, code, init=False):
        status = self._container_status(container, init)
        started = status["state"].get("running", {}).get("startedAt", timestamp())
        if "terminated" in status["state"]:
            return
        status["state"] = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": timestamp(),
                "containerID": status.get("containerID", ""),
            }
        }
        status["ready"] = False
        status["started"] = False

    async def _crash_backoff(self, container, backoff, init=False):
        status = self._container_status(container, init)
        delay = backoff.delay()
        message = f"back-off {delay:g}s restarting failed container={container['name']} pod={self.name}_{self.namespace}({self.uid})"
        self.kubelet.record(
            self.pod,
            "BackOff",
            f"Back-off restarting failed container {container['name']} in pod {self.name}_{self.namespace}({self.uid})",
            "Warning",
            container,
        )
        status["lastState"] = status["state"]
        status["restartCount"] += 1
        status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        self.publish()
        await asyncio.sleep(delay)

    async def _supervise(self, container, process):
        backoff = Backoff(*RESTART_BACKOFF, self.kubelet.time_scale)
        while True:
            code = await process.wait() if process else 128
            self.processes.pop(container["name"], None)
            self._terminated(container, code)
            self.publish()
            if self._terminate.is_set():
                return
            if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                self.kubelet.store.close_log(self.namespace, self.name, container["name"])
                return
            await self._crash_backoff(container, backoff)
            process = await self._start_retrying(container)

    async def _kill_all(self, grace, events=False):
        """Stop every running container: SIGTERM, SIGKILL after ``grace`` seconds."""
        kubelet = self.kubelet
        stops = []
        for name, process in list(self.processes.items()):
            container = next((c for c in self.spec["containers"] if c["name"] == name), None)
            if events and container:
                kubelet.record(
                    self.pod, "Killing", f"Stopping container {name}", container=container
                )
            stops.append(self._stop_one(name, process, grace, container))
        await asyncio.gather(*stops)
        for task in list(self.supervisors.values()):
            task.cancel()
        for name, status in self.statuses.items():
            kubelet.store.close_log(self.namespace, self.name, name)
            if "running" in status["state"]:
                self._terminated({"name": name}, 137)

    async def _stop_one(self, name, process, grace, container):
        code = await process.stop(grace)
        if container is not None:
            self._terminated(container, code)
        self.processes.pop(name, None)
