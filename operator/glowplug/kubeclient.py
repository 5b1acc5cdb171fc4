"""One way to reach the API server, shared by the operator and the activator."""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def new_api_client() -> client.ApiClient:
    """A kubernetes_asyncio ApiClient.

    An explicit ``$KUBECONFIG`` wins (a developer pointing a component at a cluster);
    otherwise the pod's service account when running in a cluster, else ~/.kube/config.
    """
    if not os.environ.get("KUBECONFIG"):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    await config.load_kube_config()
    return client.ApiClient()
