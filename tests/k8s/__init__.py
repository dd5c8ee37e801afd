"""A Kubernetes API emulator for tests and benchmarks (see cluster.py and store.py)."""
