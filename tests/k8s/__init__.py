"""A Kubernetes emulator for tests and benchmarks: API server, scheduler, kubelets.

Entry points: :class:`tests.k8s.cluster.Cluster`, the ``k8s_cluster`` fixture
(fixtures.py) and ``python -m tests.k8s serve`` (__main__.py). Faults (errors,
latency, broken watches, outages) are injected in process with
``cluster.faults`` or, into a running emulator from another process, with
``python -m tests.k8s fault`` or ``/emulator/faults`` (faults.py).

API server
    store.py (objects, versions, selectors, update/patch; its docstring is the
    in-process API the controllers use), watch.py, deletion.py (graceful delete,
    finalizers, garbage collection), logs.py (``pods/log`` buffers), apiserver.py
    (the HTTP routes), selectors.py, patch.py, resources.py (types, defaults),
    validation.py (schema + format rules, 422), rbac.py, faults.py, errors.py.
Scheduler
    scheduler.py (filter and score plugins, pure), scheduling.py (the loop).
Kubelet
    kubelet.py, podworker.py, runtime.py, catalog.py (image -> local command),
    oci.py (registry client), fake_repo2docker.py, clusterdns.py (Service names).
"""
