"""The real-hub fixture itself: a hub answers through the proxy, with a token and cookies."""

import jupyterhub


async def test_hub_starts_and_answers_through_proxy(hub_factory):
    hub = await hub_factory("c.JupyterHub.authenticator_class = 'dummy'\n")
    status, info = await hub.api("GET", "/")
    assert status == 200
    assert info["version"] == jupyterhub.__version__
    status, users = await hub.api("GET", "/users")
    assert status == 200 and users == []
    # the browser stand-in goes through configurable-http-proxy and keeps cookies
    browser = hub.browser()
    async with browser.get(hub.url + "/hub/login") as resp:
        assert resp.status == 200
        assert "_xsrf" in {c.key for c in browser.cookie_jar}


async def test_bad_token_is_refused(hub_factory):
    hub = await hub_factory()
    status, _ = await hub.api("GET", "/users", token="not-a-token")
    assert status == 403
