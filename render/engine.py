"""Offline render: run the real program under Pulumi's mock engine and write what it would create.

No cluster, no credentials, no Pulumi CLI. ``python -m render [stack ...] [--out DIR]``
(``./dev render``) loads ``stacks/Pulumi.<stack>.yaml``, runs :func:`pulumi_llmd.program.main` with a
recording mock monitor, and writes ``DIR/<stack>/``:

* ``<Kind>--<namespace or _cluster>--<name>.yaml``: each Kubernetes object, as a full manifest;
* ``_helm--<name>.yaml``: each Helm chart (chart, repository, version, values). Charts are remote
  components that Pulumi does not expand under mocks, so their templates are not rendered;
* ``_yaml--<name>.yaml``: each remote YAML install (its URL), opaque for the same reason;
* ``_cloud--<pulumi-type>--<name>.yaml``: each cloud resource (GKE/EKS) with its inputs;
* ``index.json``, and ``SUMMARY.md`` for review (:mod:`render.summary`: images, replicas,
  accelerators per pod, charts, remote YAML URLs, object counts).

Secret values are written as ``[secret]``; secure config values (which only the CLI can decrypt)
enter the program as a visible placeholder that is still marked secret. Output is deterministic:
sorted keys, names from object names, so two commits' renders can be diffed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from pulumi_llmd.config import ConfigError
from render.summary import summary_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]
STACKS_DIR = REPO_ROOT / "stacks"
DEFAULT_OUT = REPO_ROOT / "build" / "render"
PROJECT = "llmd"
SECRET_MARK = "[secret]"
# Pulumi's wire marker for a secret value inside a serialized property map.
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
OPAQUE_NOTE = (
    "{what} is a remote component: Pulumi does not expand it under mocks, so the objects it creates are"
    " not rendered here. This file records exactly what the program passes to it."
)


@dataclass
class Registration:
    """One RegisterResource call, as the engine would have received it."""

    pulumi_type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    provider: str
    dependencies: list[str]
    retain_on_delete: bool
    protect: bool
    transforms: int
    secret_paths: list[str]
    # customTimeouts as sent ({"create": "65m", ...}; only the ones set).
    custom_timeouts: dict[str, str] = field(default_factory=dict)


@dataclass
class RenderedObject:
    file: str
    source: str  # k8s | helm | yaml | cloud
    document: dict[str, Any]
    registration: Registration

    @property
    def kind(self) -> str:
        return str(self.document.get("kind", self.registration.pulumi_type.rsplit(":", 1)[-1]))

    @property
    def name(self) -> str:
        metadata = self.document.get("metadata") or {}
        return str(metadata.get("name", self.registration.name))

    @property
    def namespace(self) -> str | None:
        if self.source == "helm":
            return self.document.get("namespace")
        metadata = self.document.get("metadata") or {}
        return metadata.get("namespace")

    def index_entry(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "source": self.source,
            "apiVersion": self.document.get("apiVersion"),
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "pulumiType": self.registration.pulumi_type,
            "urn": self.registration.urn,
            # Where secret values were (written as [secret]), e.g. ["stringData"].
            "secretPaths": self.registration.secret_paths,
        }


@dataclass
class RenderResult:
    stack: str
    registrations: list[Registration]
    objects: list[RenderedObject] = field(default_factory=list)
    # Function calls no stub answered (they returned {}): listed in SUMMARY.md.
    unanswered_calls: list[str] = field(default_factory=list)

    def of_source(self, source: str) -> list[RenderedObject]:
        return [o for o in self.objects if o.source == source]

    def manifests(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [o.document for o in self.of_source("k8s") if kind is None or o.kind == kind]

    def get(self, kind: str, name: str) -> RenderedObject:
        for rendered in self.objects:
            if rendered.kind == kind and rendered.name == name:
                return rendered
        raise KeyError(f"{kind}/{name} not rendered for stack {self.stack}")

    def by_urn(self, urn: str) -> Registration:
        for registration in self.registrations:
            if registration.urn == urn:
                return registration
        raise KeyError(urn)


ResourceOutputs = Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]
CallResult = Callable[[pulumi.runtime.MockCallArgs], dict[str, Any]]


def _cloud_stubs() -> tuple[dict[str, ResourceOutputs], dict[str, CallResult]]:
    """Outputs and lookups cloud resources need offline, from ``render.stubs``.

    That optional module (the cloud work's) exposes ``RESOURCE_OUTPUTS`` (Pulumi type -> function of
    the mock args returning extra output properties, e.g. a cluster endpoint) and ``CALL_RESULTS``
    (function token -> function returning the invoke result).
    """
    try:
        stubs = importlib.import_module("render.stubs")
    except ModuleNotFoundError:
        return {}, {}
    return dict(getattr(stubs, "RESOURCE_OUTPUTS", {})), dict(getattr(stubs, "CALL_RESULTS", {}))


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resource_outputs, self.call_results = _cloud_stubs()
        self.unanswered_calls: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ.startswith("kubernetes:helm.sh/") or args.typ.startswith("kubernetes:yaml/"):
            state["resources"] = []  # what a real engine returns is unknowable offline
        if args.typ in self.resource_outputs:
            state.update(self.resource_outputs[args.typ](args))
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        # Failures as a list: pulumi's MockMonitor iterates the second element (None raises TypeError).
        if args.token in self.call_results:
            return self.call_results[args.token](args), []
        self.unanswered_calls.append(args.token)
        return {}, []


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack" and self._stack_transforms:
            request = self._transformed(request)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        raw = json_format.MessageToDict(request.object)
        self.registrations.append(
            Registration(
                pulumi_type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=bool(request.custom),
                inputs=_plain(raw),
                provider=request.provider,
                dependencies=sorted(request.dependencies),
                retain_on_delete=bool(request.retainOnDelete),
                protect=bool(request.protect),
                transforms=len(request.transforms),
                secret_paths=sorted(_secret_paths(raw)),
                custom_timeouts={
                    operation: value
                    for operation in ("create", "update", "delete")
                    if (value := getattr(request.customTimeouts, operation))
                },
            )
        )
        return response

    def _transformed(self, request: Any) -> Any:
        """Run the stack transforms the program registered, as the engine would before registering
        (the mock monitor records them but does not run them), so the render shows their effect.
        Only props are applied; a transform that leaves a resource alone returns None."""
        pulumi_mocks._ensure_event_loop()
        props = rpc.deserialize_properties(request.object, keep_unknowns=True)
        changed = False
        for transform in self._stack_transforms:
            result = transform(
                pulumi.ResourceTransformArgs(
                    custom=bool(request.custom),
                    type_=request.type,
                    name=request.name,
                    props=props,
                    opts=pulumi.ResourceOptions(),
                )
            )
            if inspect.isawaitable(result):
                result = _sync_await(result)
            if result is not None:
                props, changed = result.props, True
        if not changed:
            return request
        transformed = type(request)()
        transformed.CopyFrom(request)
        transformed.object.CopyFrom(_sync_await(rpc.serialize_properties(props, {})))
        return transformed


def load_stack_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Pulumi's view of a stack file: every value a string (objects as JSON), plus the secret keys."""
    document = yaml.safe_load(path.read_text()) or {}
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = f"<{key}: a secure value only the Pulumi CLI can decrypt>"
            secret_keys.append(key)
        elif isinstance(value, dict | list):
            values[key] = json.dumps(value)
        elif isinstance(value, bool):
            values[key] = "true" if value else "false"
        else:
            values[key] = str(value)
    return values, secret_keys


def run_program(
    stack: str,
    config: dict[str, str],
    secret_keys: Sequence[str] = (),
    program: Callable[[], Awaitable[None] | None] | None = None,
) -> tuple[list[Registration], list[str]]:
    """Run a Pulumi program (default: pulumi_llmd.program.main; a coroutine function works too) under
    mocks.

    Returns every registration in order, and the function calls no stub answered. ``set_mocks``
    configures process-global state, so runs are sequential: each one installs a fresh root stack,
    monitor and config before the program starts.
    """
    if program is None:
        from pulumi_llmd.program import main

        program = main

    mocks = _Mocks()
    monitor = _RecordingMonitor(mocks)
    with fresh_event_loop():
        pulumi_settings.ROOT.set(None)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
        set_all_config(config, list(secret_keys))
        pulumi_settings.SETTINGS.rpc_manager.clear()
        pulumi_settings.SETTINGS.outputs.clear()
        _sync_await(run_pulumi_func(program))
    return monitor.registrations, sorted(set(mocks.unanswered_calls))


@contextlib.contextmanager
def fresh_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new current event loop for one Pulumi run, closed afterwards.

    Pulumi's SDK creates futures on the current loop as resources are declared. Whatever ran before
    (e.g. an asyncio test runner) may have closed or unset the thread's loop, so each run brings its
    own and leaves no loop behind, as asyncio runners do.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def render_stack(stack: str, stacks_dir: Path = STACKS_DIR) -> RenderResult:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(
            p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir.glob("Pulumi.*.yaml")
        )
        raise FileNotFoundError(f"no stack file {path} (stacks: {', '.join(known)})")
    config, secret_keys = load_stack_file(path)
    registrations, unanswered = run_program(stack, config, secret_keys)
    return render_registrations(stack, registrations, unanswered)


def render_registrations(
    stack: str, registrations: list[Registration], unanswered_calls: Sequence[str] = ()
) -> RenderResult:
    result = RenderResult(stack=stack, registrations=registrations, unanswered_calls=list(unanswered_calls))
    for registration in registrations:
        rendered = _render_one(registration)
        if rendered is not None:
            result.objects.append(rendered)
    result.objects.sort(key=lambda o: o.file)
    files = [o.file for o in result.objects]
    duplicates = sorted({f for f in files if files.count(f) > 1})
    if duplicates:
        raise ValueError(f"two resources render to the same file: {duplicates}")
    return result


def write_render(result: RenderResult, out_dir: Path) -> Path:
    target = out_dir / result.stack
    target.mkdir(parents=True, exist_ok=True)
    for stale in [*target.glob("*.yaml"), target / "index.json", target / "SUMMARY.md"]:
        stale.unlink(missing_ok=True)
    for rendered in result.objects:
        (target / rendered.file).write_text(_yaml(rendered.document))
    index = [o.index_entry() for o in result.objects]
    (target / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (target / "SUMMARY.md").write_text(summary_markdown(result))
    return target


def _render_one(registration: Registration) -> RenderedObject | None:
    typ = registration.pulumi_type
    if not registration.custom and typ.split(":", 1)[0] == PROJECT:
        return None  # this project's ComponentResources: structure, not objects
    if typ.startswith("pulumi:providers:"):
        return None
    inputs = _mask_secrets(registration.inputs)
    if typ.startswith("kubernetes:helm.sh/"):
        document = {
            "note": OPAQUE_NOTE.format(what="A Helm chart"),
            "pulumiType": typ,
            "name": registration.name,
            "chart": inputs.get("chart"),
            "repository": (inputs.get("repositoryOpts") or {}).get("repo"),
            "version": inputs.get("version"),
            "namespace": inputs.get("namespace"),
            "values": inputs.get("values") or {},
        }
        return RenderedObject(f"_helm--{registration.name}.yaml", "helm", document, registration)
    if typ.startswith("kubernetes:yaml/"):
        document = {
            "note": OPAQUE_NOTE.format(what="Remote YAML"),
            "pulumiType": typ,
            "name": registration.name,
            "file": inputs.get("file"),
            "files": inputs.get("files"),
            "retainOnDelete": registration.retain_on_delete,
        }
        document = {k: v for k, v in document.items() if v is not None}
        return RenderedObject(f"_yaml--{registration.name}.yaml", "yaml", document, registration)
    if typ.startswith("kubernetes:"):
        metadata = inputs.get("metadata") or {}
        namespace = metadata.get("namespace") or "_cluster"
        file = f"{inputs['kind']}--{namespace}--{metadata.get('name', registration.name)}.yaml"
        return RenderedObject(file, "k8s", inputs, registration)
    safe_type = re.sub(r"[^A-Za-z0-9.]+", "_", typ).strip("_")
    document = {"pulumiType": typ, "name": registration.name, "inputs": inputs}
    if not registration.custom:
        document["note"] = OPAQUE_NOTE.format(what="This resource")
    return RenderedObject(f"_cloud--{safe_type}--{registration.name}.yaml", "cloud", document, registration)


def _plain(value: Any) -> Any:
    """JSON-decoded wire values back to Python: whole numbers as ints (the wire only has doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SECRET_SIG_KEY) == _SECRET_SIG


def _secret_paths(value: Any, path: str = "") -> Iterator[str]:
    if _is_secret(value):
        yield path or "."
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_paths(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_paths(item, f"{path}[{index}]")


def _mask_secrets(value: Any) -> Any:
    if _is_secret(value):
        inner = value.get("value")
        if isinstance(inner, dict):
            return {key: SECRET_MARK for key in inner}
        return SECRET_MARK
    if isinstance(value, dict):
        return {k: _mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_secrets(v) for v in value]
    return value


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (embedded configs) as literal blocks, so diffs show changed lines."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)


def _yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_ReadableDumper, sort_keys=True, default_flow_style=False, width=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m render", description=__doc__.split("\n")[0])
    parser.add_argument("stacks", nargs="*", help="stack names (default: every stacks/Pulumi.<stack>.yaml)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default build/render)"
    )
    options = parser.parse_args(argv)
    stacks = options.stacks or sorted(
        p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml")
    )
    for stack in stacks:
        try:
            result = render_stack(stack)
        except (FileNotFoundError, ConfigError) as error:
            # A mistyped stack name or a bad stack file is the user's to fix: one clear line.
            print(f"render: {stack}: {error}", file=sys.stderr)
            return 2
        target = write_render(result, options.out)
        counts = {s: len(result.of_source(s)) for s in ("k8s", "helm", "yaml", "cloud")}
        detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"{stack}: {len(result.objects)} files ({detail}) -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
