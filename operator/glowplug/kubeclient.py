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


class TimeoutApiClient(client.ApiClient):  # type: ignore[misc]
    """An ApiClient whose calls without their own timeout get ``DEFAULT_TIMEOUT``."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = DEFAULT_TIMEOUT
        return super().request(*args, **kwargs)


async def new_api_client() -> client.ApiClient:
    """A kubernetes_asyncio ApiClient.

    An explicit ``$KUBECONFIG`` wins (a developer pointing a component at a cluster);
    otherwise the pod's service account when running in a cluster, else ~/.kube/config.
    """
    if not os.environ.get("KUBECONFIG"):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return TimeoutApiClient()
        except config.ConfigException:
            pass
    await config.load_kube_config()
    return TimeoutApiClient()
