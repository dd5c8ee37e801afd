"""A refused launch reads as its sentence on the hub's pages, on JupyterHub 5 and 6."""

import pytest
from jupyterhub.utils import format_exception

from binder_spawner.errors import spawn_error

SENTENCE = (
    "https://gitlab.com/group/project.git already has 2 running sessions, the limit for "
    "this repository. Try again in a few minutes."
)


@pytest.mark.parametrize(
    "status, reason",
    [
        pytest.param(429, "limit", id="full"),
        pytest.param(400, "invalid", id="bad-link"),
        pytest.param(503, "service", id="service-down"),
    ],
)
def test_refusal_reads_as_its_sentence(status, reason):
    error = spawn_error(SENTENCE, status_code=status, reason=reason)
    assert error.status_code == status
    # JupyterHub formats the exception this way for the progress stream
    # ("Spawn failed: ...") and for the "server not running" page
    assert format_exception(error) == (SENTENCE, None)
    assert format_exception(error, only_jupyterhub=True) == (SENTENCE, None)
