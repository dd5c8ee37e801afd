"""jupyterhub-binder on one machine (local mode).

Started by ``make run``; serves http://127.0.0.1:$BINDER_PORT (default 8000).
"""

import os

c = get_config()  # noqa: F821

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("BINDER_PORT", "8000"))
state_dir = os.path.abspath(os.environ.get("BINDER_STATE_DIR", "state"))
os.makedirs(state_dir, exist_ok=True)
c.JupyterHub.db_url = "sqlite:///" + os.path.join(state_dir, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(state_dir, "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = os.path.join(state_dir, "jupyterhub-proxy.pid")

c.JupyterHub.spawner_class = "binder-local"
c.JupyterHub.authenticator_class = "binder-anonymous"
