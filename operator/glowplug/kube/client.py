"""One way to reach the API server, shared by the operator and the activator.

Every call has a connect and a read timeout: kubernetes_asyncio's default is none at all
(an empty ``aiohttp.ClientTimeout``), so a black-holed API server (stopped, or a network
that drops packets) would hang a call, and the loop making it, forever. Calls that pass
their own ``_request_timeout`` (watches) keep it.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(
    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
)
# The API server sends a watch bookmark about once a minute (allowWatchBookmarks): a
# watch that has read nothing for two such intervals is dead.
BOOKMARK_INTERVAL = 60.0
WATCH_TIMEOUT = aiohttp.ClientTimeout(
    total=None,
    connect=CONNECT_TIMEOUT,
    sock_connect=CONNECT_TIMEOUT,
    sock_read=2 * BOOKMARK_INTERVAL,
)


# Every request names its component: the API server's audit log (and its
# apiserver_request_* metrics per client, where a cluster records them) then tells
# glowplug's load from everyone else's. kopf's own client sends "kopf/<version>".
USER_AGENT_PREFIX = "glowplug"


def user_agent(component: str) -> str:
    from glowplug import __version__

    suffix = f"-{component}" if component else ""
    return f"{USER_AGENT_PREFIX}{suffix}/{__version__}"


class TimeoutApiClient(client.ApiClient):  # type: ignore[misc]
    """An ApiClient whose calls without their own timeout get ``DEFAULT_TIMEOUT``."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = DEFAULT_TIMEOUT
        return super().request(*args, **kwargs)


async def new_api_client(component: str = "") -> client.ApiClient:
    """A kubernetes_asyncio ApiClient whose user agent names ``component``.

    An explicit ``$KUBECONFIG`` wins (a developer pointing a component at a cluster);
    otherwise the pod's service account when running in a cluster, else ~/.kube/config.
    """
    if not os.environ.get("KUBECONFIG"):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return _named(TimeoutApiClient(), component)
        except config.ConfigException:
            pass
    await config.load_kube_config()
    return _named(TimeoutApiClient(), component)


def _named(api: client.ApiClient, component: str) -> client.ApiClient:
    api.user_agent = user_agent(component)
    return api
