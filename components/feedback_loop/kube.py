"""The Kubernetes client the deploy target and the training launcher share."""

from __future__ import annotations

from typing import Any


def custom_objects_api(error: type[Exception], hint: str) -> Any:
    """CustomObjectsApi from the pod's ServiceAccount, else the kube-config (KUBECONFIG);
    without either, `error` with one line ending in `hint` (what the user should do)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:
            raise error(f"no Kubernetes credentials ({err}): {hint}") from None
    return client.CustomObjectsApi()
