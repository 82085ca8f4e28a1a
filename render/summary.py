"""``SUMMARY.md`` of an offline render: what a reviewer of a stack change wants first.

Per stack: every image with its tag or digest (unpinned ones flagged), each workload's replicas and
accelerators per pod, the GPU capacity cloud stacks provision, the Helm charts with their versions,
the remote YAML installs with their URLs, and object counts, followed by the full object list. The
numbers come from the rendered objects themselves, so the summary cannot disagree with the files
beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pulumi_llmd.catalog.efa import EFA_INSTANCE_TYPES
from pulumi_llmd.config.images import image_reference_problem

if TYPE_CHECKING:
    from render.engine import RenderedObject, RenderResult

# Resource names in limits that are not accelerators or fabric devices.
BASIC_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
SOURCES = (
    ("k8s", "Kubernetes objects"),
    ("helm", "Helm charts"),
    ("yaml", "remote YAML"),
    ("cloud", "cloud"),
)


@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way a reviewer reads it."""

    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> ImageRef:
        name, _, digest = reference.partition("@")
        last = name.rsplit("/", 1)[-1]
        repository, tag = (name.rsplit(":", 1)[0], last.rsplit(":", 1)[1]) if ":" in last else (name, None)
        return cls(repository, tag, digest or None)

    @property
    def reference(self) -> str:
        return (
            self.repository
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    @property
    def pin(self) -> str:
        """The tag and digest; anything the config's image rule would refuse (no tag, `latest`, a
        malformed digest) is spelled out in bold, as the `llmd-images-pinned` policy would."""
        shown = " @ ".join(f"`{part}`" for part in (self.tag, self.digest) if part) or "-"
        problem = image_reference_problem(self.reference)
        return shown if problem is None else f"{shown} **{problem}**"


@dataclass(frozen=True)
class PodTemplate:
    role: str  # "" for a Deployment's pods, "leader"/"worker" in a LeaderWorkerSet
    pods: int  # pods per replica with this template
    spec: dict[str, Any]


@dataclass(frozen=True)
class Workload:
    rendered: RenderedObject
    replicas: int
    templates: tuple[PodTemplate, ...]

    @property
    def replicas_text(self) -> str:
        if self.rendered.kind == "LeaderWorkerSet":
            size = sum(t.pods for t in self.templates)
            return f"{self.replicas} groups x {size} pods"
        return str(self.replicas)


def workloads(result: RenderResult) -> list[Workload]:
    found = []
    for rendered in result.of_source("k8s"):
        spec = rendered.document.get("spec") or {}
        if rendered.kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            template = PodTemplate("", 1, spec["template"]["spec"])
            found.append(Workload(rendered, int(spec.get("replicas", 1)), (template,)))
        elif rendered.kind == "DaemonSet":
            found.append(Workload(rendered, 0, (PodTemplate("", 1, spec["template"]["spec"]),)))
        elif rendered.kind == "LeaderWorkerSet":
            group = spec["leaderWorkerTemplate"]
            size = int(group.get("size", 1))
            templates = [PodTemplate("leader", 1, group["leaderTemplate"]["spec"])]
            if size > 1:
                templates.append(PodTemplate("worker", size - 1, group["workerTemplate"]["spec"]))
            found.append(Workload(rendered, int(spec.get("replicas", 1)), tuple(templates)))
    return sorted(found, key=lambda w: (w.rendered.namespace or "", w.rendered.name))


def containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, container): init containers that keep running are native sidecars."""
    for container in pod.get("initContainers", []):
        kind = "sidecar" if container.get("restartPolicy") == "Always" else "init"
        yield f"{container['name']} ({kind})", container
    for container in pod.get("containers", []):
        yield container["name"], container


def accelerators(pod: dict[str, Any]) -> dict[str, int]:
    """Extended resources (GPUs, RDMA, EFA ...) one pod limits, summed over its containers."""
    totals: Counter[str] = Counter()
    for _label, container in containers(pod):
        for resource, amount in ((container.get("resources") or {}).get("limits") or {}).items():
            if resource not in BASIC_RESOURCES:
                totals[resource] += int(str(amount))
    return dict(sorted(totals.items()))


def summary_markdown(result: RenderResult) -> str:
    counts = {source: len(result.of_source(source)) for source, _ in SOURCES}
    detail = ", ".join(f"{counts[source]} {label}" for source, label in SOURCES if counts[source])
    lines = [
        f"# Offline render of stack `{result.stack}`",
        "",
        f"{len(result.objects)} files: {detail}.",
        "Helm charts and remote YAML are listed with their inputs only: Pulumi does not expand",
        "remote components under mocks, so the objects they create are not counted here.",
    ]
    lines += _images(result) + _workloads(result) + _capacity(result) + _charts(result) + _remote_yaml(result)
    lines += _counts(result) + _objects(result)
    if result.unanswered_calls:
        lines += ["", "Function calls answered with an empty result (no offline stub):", ""]
        lines += [f"- `{token}`" for token in result.unanswered_calls]
    return "\n".join(lines) + "\n"


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _images(result: RenderResult) -> list[str]:
    used: dict[str, list[str]] = {}
    for workload in workloads(result):
        for template in workload.templates:
            for label, container in containers(template.spec):
                where = f"{workload.rendered.name}/{label.split(' ')[0]}"
                if where not in used.setdefault(container["image"], []):
                    used[container["image"]].append(where)
    rows = []
    for reference in sorted(used):
        image = ImageRef.parse(reference)
        rows.append([f"`{image.repository}`", image.pin, ", ".join(used[reference])])
    return _table("Images", ["image", "tag / digest", "used by"], rows)


def _workloads(result: RenderResult) -> list[str]:
    rows = []
    for workload in workloads(result):
        for template in workload.templates:
            name = workload.rendered.name + (f" ({template.role})" if template.role else "")
            devices = accelerators(template.spec)
            per_pod = ", ".join(f"{resource}: {count}" for resource, count in devices.items()) or "-"
            labels = ", ".join(label for label, _ in containers(template.spec))
            rows.append(
                [
                    name,
                    workload.rendered.kind,
                    workload.rendered.namespace or "-",
                    workload.replicas_text,
                    labels,
                    per_pod,
                ]
            )
    header = ["workload", "kind", "namespace", "replicas", "containers", "accelerators per pod"]
    return _table("Workloads", header, rows)


def _capacity(result: RenderResult) -> list[str]:
    """GPU machines a cloud stack provisions (GKE node pools, EKS node groups)."""
    rows = []
    # A node group whose launch template names the instance type lists none itself; the render's
    # mock ids are "<resource name>-id", which is what the node group's launchTemplate.id holds.
    template_types = {
        f"{r.registration.name}-id": (r.document.get("inputs") or {}).get("instanceType")
        for r in result.of_source("cloud")
        if r.registration.pulumi_type == "aws:ec2/launchTemplate:LaunchTemplate"
    }
    for rendered in result.of_source("cloud"):
        inputs = rendered.document.get("inputs") or {}
        typ = rendered.registration.pulumi_type
        if typ == "gcp:container/nodePool:NodePool":
            node = inputs.get("nodeConfig") or {}
            gpus = ", ".join(f"{a['count']} x {a['type']}" for a in node.get("guestAccelerators") or [])
            scaling = inputs.get("autoscaling")
            nodes = (
                f"{scaling.get('minNodeCount', 0)}-{scaling['maxNodeCount']} (autoscaled)"
                if scaling
                else str(inputs.get("nodeCount", "-"))
            )
            rows.append(
                [
                    inputs.get("name", rendered.name),
                    "GKE node pool",
                    node.get("machineType", "-"),
                    gpus or "-",
                    nodes,
                ]
            )
        elif typ == "aws:eks/nodeGroup:NodeGroup":
            scaling = inputs.get("scalingConfig") or {}
            nodes = f"{scaling.get('desiredSize')} ({scaling.get('minSize')}-{scaling.get('maxSize')})"
            kind = inputs.get("amiType", "")
            types = inputs.get("instanceTypes") or []
            template_id = str((inputs.get("launchTemplate") or {}).get("id", ""))
            if not types and (from_template := template_types.get(template_id)):
                types = [from_template]
            # EC2 reports no accelerators on a node group: the GPUs come from the instance catalogue.
            gpus = ", ".join(
                f"{EFA_INSTANCE_TYPES[t].gpus} x {EFA_INSTANCE_TYPES[t].gpu_model}"
                for t in types
                if t in EFA_INSTANCE_TYPES
            )
            rows.append(
                [
                    inputs.get("nodeGroupName", rendered.name),
                    "EKS node group" + (" (GPU AMI)" if "NVIDIA" in kind else ""),
                    ", ".join(types) or "-",
                    gpus or "-",
                    nodes,
                ]
            )
    header = ["pool", "kind", "machine", "accelerators per node", "nodes"]
    return _table("Cloud capacity", header, sorted(rows))


def _charts(result: RenderResult) -> list[str]:
    rows = [
        [
            f"`{o.document.get('chart')}`",
            f"`{o.document.get('version')}`" if o.document.get("version") else "**unpinned**",
            o.document.get("repository") or "-",
            o.document.get("namespace") or "-",
        ]
        for o in result.of_source("helm")
    ]
    return _table("Helm charts", ["chart", "version", "repository", "namespace"], rows)


def _remote_yaml(result: RenderResult) -> list[str]:
    rows = []
    for rendered in result.of_source("yaml"):
        files = rendered.document.get("files") or [rendered.document.get("file")]
        retained = "yes" if rendered.document.get("retainOnDelete") else "no"
        rows += [[rendered.name, str(url), retained] for url in files if url]
    return _table("Remote YAML", ["install", "URL", "retained on delete"], rows)


def _counts(result: RenderResult) -> list[str]:
    kinds = Counter(o.kind for o in result.of_source("k8s"))
    rows = [[kind, str(count)] for kind, count in sorted(kinds.items())]
    cloud = Counter(o.registration.pulumi_type for o in result.of_source("cloud"))
    rows += [[f"`{typ}`", str(count)] for typ, count in sorted(cloud.items())]
    return _table("Object counts", ["kind", "count"], rows)


def _objects(result: RenderResult) -> list[str]:
    rows = sorted(result.objects, key=lambda o: (o.source != "k8s", o.kind, o.namespace or "", o.name))
    return _table(
        "All objects",
        ["kind", "name", "namespace", "source"],
        [[o.kind, o.name, o.namespace or "-", o.source] for o in rows],
    )
