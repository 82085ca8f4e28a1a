"""A small fake Kubernetes API server (aiohttp on 127.0.0.1) speaking list/watch JSON.

It stores objects per collection path, assigns increasing resourceVersions, filters by
labelSelector (``k=v,...``) and fieldSelector (``metadata.name=x``), streams watch events after the
requested resourceVersion, can expire watches with a 410 ERROR event, and answers 404 for
collections that do not exist (an uninstalled CRD). Single objects can be read, created (POST to the
collection; 409 AlreadyExists), replaced (PUT; 409 Conflict when metadata.resourceVersion is not the
stored one, as the API server's optimistic concurrency) and deleted; ``unavailable`` makes every
request fail with 503, like an unreachable control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from typing import Any

from aiohttp import web


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def crd_path(group: str, version: str, namespace: str, plural: str) -> str:
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"


class FakeKubeApi:
    def __init__(self) -> None:
        self.rv = 100
        self.collections: dict[str, dict[str, dict[str, Any]]] = {}
        self.events: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.requests: list[str] = []
        self._changed = asyncio.Condition()
        self._expired_before = 0  # watches from an older resourceVersion get 410
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.token = "fake-service-account-token"  # clients must send it as a bearer token
        self.unavailable = False
        self._stalled_before = 0  # watches opened before this generation send nothing more
        self._generation = 0

    # ---- test-side API -----------------------------------------------------------------------
    def add_collection(self, path: str) -> None:
        self.collections.setdefault(path, {})
        self.events.setdefault(path, [])

    async def put(self, path: str, obj: dict[str, Any]) -> None:
        self.add_collection(path)
        self.rv += 1
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        name = stored["metadata"]["name"]
        kind = "MODIFIED" if name in self.collections[path] else "ADDED"
        self.collections[path][name] = stored
        await self._emit(path, kind, stored)

    async def delete(self, path: str, name: str) -> None:
        stored = self.collections[path].pop(name)
        self.rv += 1
        stored = copy.deepcopy(stored)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        await self._emit(path, "DELETED", stored)

    async def expire_watches(self) -> None:
        """Every open watch gets a 410 Gone; a client must relist."""
        self._expired_before = self.rv + 1
        async with self._changed:
            self._changed.notify_all()

    async def stall_watches(self) -> None:
        """Every open watch goes silent and stays open, as one whose connection died on the way
        (a NAT or load balancer dropping the flow): no event, no close, no reset reaches the client.
        Watches opened later work."""
        self._generation += 1
        self._stalled_before = self._generation
        async with self._changed:
            self._changed.notify_all()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        app.router.add_post("/{tail:.*}", self._create)
        app.router.add_put("/{tail:.*}", self._replace)
        app.router.add_delete("/{tail:.*}", self._delete)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- server side -------------------------------------------------------------------------
    async def _emit(self, path: str, kind: str, obj: dict[str, Any]) -> None:
        self.events[path].append((self.rv, kind, obj))
        async with self._changed:
            self._changed.notify_all()

    def _refusal(self, request: web.Request) -> web.Response | None:
        self.requests.append(f"{request.method} {request.path}?{request.query_string}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "missing or wrong bearer token")
        if self.unavailable:
            return _status(503, "ServiceUnavailable", "the API server is unavailable")
        return None

    def _object(self, path: str) -> tuple[str, str] | None:
        """(collection, name) when ``path`` names one object of a known collection."""
        collection, _, name = path.rpartition("/")
        return (collection, name) if collection in self.collections and name else None

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        if request.path not in self.collections:
            return _status(
                404, "NotFound", f"the server could not find the requested resource ({request.path})"
            )
        obj = await request.json()
        name = obj.get("metadata", {}).get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if name in self.collections[request.path]:
            return _status(409, "AlreadyExists", f"{name!r} already exists")
        obj["metadata"].pop("resourceVersion", None)
        await self.put(request.path, obj)
        return web.json_response(self.collections[request.path][name], status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        target = self._object(request.path)
        if target is None or target[1] not in self.collections[target[0]]:
            return _status(404, "NotFound", f"{request.path} not found")
        collection, name = target
        obj = await request.json()
        stored_version = self.collections[collection][name]["metadata"]["resourceVersion"]
        if obj.get("metadata", {}).get("resourceVersion") != stored_version:
            return _status(
                409, "Conflict", f"the object {name!r} has been modified; apply your changes again"
            )
        await self.put(collection, obj)
        return web.json_response(self.collections[collection][name])

    async def _delete(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        target = self._object(request.path)
        if target is None or target[1] not in self.collections[target[0]]:
            return _status(404, "NotFound", f"{request.path} not found")
        await self.delete(*target)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if (refused := self._refusal(request)) is not None:
            return refused
        target = self._object(path)
        if target is not None:
            found = self.collections[target[0]].get(target[1])
            if found is None:
                return _status(404, "NotFound", f"{path} not found")
            return web.json_response(found)
        if path not in self.collections:
            return _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        selector = _selector(request.query.get("labelSelector", ""))
        fields = _selector(request.query.get("fieldSelector", ""))

        def matches(obj: dict[str, Any]) -> bool:
            labels = obj["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                return False
            return all(k != "metadata.name" or obj["metadata"]["name"] == v for k, v in fields.items())

        if request.query.get("watch") not in ("true", "1"):
            items = [obj for obj in self.collections[path].values() if matches(obj)]
            return web.json_response(
                {
                    "kind": "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        since = int(request.query.get("resourceVersion") or self.rv)
        generation = self._generation
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while not self._closing:
            if generation < self._stalled_before:  # silent until the client gives up or we stop
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if since < self._expired_before:
                gone = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "too old resource version",
                    "reason": "Expired",
                    "code": 410,
                }
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                break
            for rv, kind, obj in self.events[path]:
                if rv > since:
                    since = rv
                    if matches(obj):
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)
            if request.transport is None or request.transport.is_closing():
                break
        return response


def _selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    # Exactly "application/json" (no charset), as the API server sends it: lightkube raises its
    # ApiError, with the Status decoded, only for that content type.
    return web.Response(
        body=json.dumps(body).encode(), status=code, headers={"Content-Type": "application/json"}
    )
