"""Every use of kmock's private API in the tests, in one place: checked on kmock 0.8.

kmock has no public hook to change a write before its emulator stores it (which the
emulator needs to play the API server: resourceVersion, generation, the status
subresource, 201 on create), and no public JSON merge patch. When a kmock upgrade
breaks the rollout tests, look here first; nothing else in tests/ imports `kmock._internal`
or calls an underscored kmock name.
"""

from __future__ import annotations

from typing import Any

import kmock
from kmock._internal import dicts  # private: merge_patch_dict (kmock 0.8)


class HookedEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with a public override point.

    Subclasses override `handle`, which sees every request first, and call `emulate`
    for kmock's own handling (what it stores and answers).
    """

    async def handle(self, request: kmock.Request) -> Any:
        return await self.emulate(request)

    async def emulate(self, request: kmock.Request) -> Any:
        return await super()._handle(request)

    async def _handle(self, request: kmock.Request) -> Any:  # private: kmock 0.8's entry point for each request
        return await self.handle(request)


def replace_data(request: kmock.Request, data: Any) -> None:
    """Makes `request` carry `data` as its parsed body, which is what `emulate` stores.

    kmock's Request is a frozen attrs class and has no public way to rewrite the body.
    """
    object.__setattr__(request, "data", data)


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) as kmock applies it: None deletes a key."""
    return dict(dicts.merge_patch_dict(current, patch))
