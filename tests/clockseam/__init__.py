"""A clock the tests move in a binder_service subprocess: see sitecustomize.py here."""

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent


def clock_env(offset_file):
    """The environment entries that make a service subprocess add ``offset_file``'s seconds."""
    return {"PYTHONPATH": str(DIRECTORY), "BINDER_TEST_CLOCK_OFFSET_FILE": str(offset_file)}
