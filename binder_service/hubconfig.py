"""The hub's settings that binder_service shares: set once, in the hub's configuration.

The service parses launch links with the spawner's ``RepoPolicy``, culls
servers after the idle and age limits the spawner tells them
(``BINDER_IDLE_TIMEOUT``, ``BINDER_MAX_AGE``), recognises anonymous users by
the authenticator's group, and places pods assuming the memory the spawner
requests. The hub computes these from its own configuration when it starts the
service and hands them over as JSON in ``BINDER_SERVICE_CONFIG``: the root
``jupyterhub_config.py`` and the chart values (``hub.extraConfig``) both call
:func:`hand_over`. The service loads them before its own ``--config`` file and
command line and refuses to start if those set a shared value differently.

This module runs in the hub; it names the hub's classes only through the
hub's ``spawner_class`` and ``authenticator_class``.
"""

import json

#: the environment variable the service reads the hub's settings from
HUB_CONFIG_ENV = "BINDER_SERVICE_CONFIG"

#: service setting -> (the hub's "spawner" or "authenticator", its trait)
SHARED = {
    ("Culler", "timeout"): ("spawner", "idle_timeout"),
    ("Culler", "max_age"): ("spawner", "max_age"),
    ("Culler", "anonymous_group"): ("authenticator", "group"),
    ("PlacementSource", "pod_memory"): ("spawner", "mem_guarantee"),
}

#: sections handed over whole: the service uses the same class
SHARED_SECTIONS = ("RepoPolicy",)


def configured_value(cls, config, name):
    """The value instances of ``cls`` get for trait ``name`` under ``config``.

    traitlets' own resolution (the most specific of the class's bases that
    sets it, so ``c.KubeSpawner.mem_guarantee`` applies to BinderSpawner unless
    ``c.BinderSpawner.mem_guarantee`` is set; else the default, dynamic ones
    included), on an instance whose ``__init__`` never runs: a spawner's wants
    a user and a hub.
    """
    probe = cls.__new__(cls)
    probe.config = config
    return getattr(probe, name)


def shared_settings(spawner_class, authenticator_class, config):
    """The service's configuration (a dict of sections) from the hub's ``config``."""
    classes = {"spawner": spawner_class, "authenticator": authenticator_class}
    settings = {section: dict(config[section]) for section in SHARED_SECTIONS if section in config}
    for (section, name), (kind, trait) in SHARED.items():
        cls = classes[kind]
        if not cls.class_traits().get(trait):
            continue  # e.g. another authenticator: no anonymous group
        value = configured_value(cls, config, trait)
        if value is not None:
            settings.setdefault(section, {})[name] = value
    return settings


def hub_settings_json(_service_spawner=None):
    """The running hub's :func:`shared_settings` as JSON: the value of ``HUB_CONFIG_ENV``.

    A callable ``environment`` value, which the hub calls when it starts the
    service, after every configuration file is loaded (a ``load_subconfig``
    file's ``c`` holds only its own values; the hub's application holds all).
    """
    from traitlets.config import Application

    hub = Application.instance()
    settings = shared_settings(hub.spawner_class, hub.authenticator_class, hub.config)
    return json.dumps(settings, default=sorted)


def hand_over(service):
    """Give ``service`` (its entry in ``c.JupyterHub.services``) the hub's shared
    settings when the hub starts it."""
    service.setdefault("environment", {})[HUB_CONFIG_ENV] = hub_settings_json
