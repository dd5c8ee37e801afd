"""An authenticator without login: each visitor gets a temporary anonymous identity."""

from jupyterhub.auth import Authenticator


class AnonymousAuthenticator(Authenticator):
    """Logs every visitor in as a new anonymous user."""
