"""Pulumi mocks for the cloud components: record every registration, answer the lookups they make.

The mock engine passes registrations through `new_resource`; the state it returns is what the
program sees as outputs, so clusters get an endpoint and CA here the way the real providers would
report them. `call` answers the data-source invocations the components make (cluster lookups and
the AWS partition); an unexpected invocation fails the test instead of returning an empty dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi

FAKE_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUMtLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg=="


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    provider: str | None


@dataclass
class CloudMocks(pulumi.runtime.Mocks):
    # Lets a test describe an adopted cluster differently (e.g. without multi-networking).
    gke_cluster_lookup: dict[str, Any] = field(
        default_factory=lambda: {
            "enableMultiNetworking": True,
            "datapathProvider": "ADVANCED_DATAPATH",
        }
    )
    resources: list[Registered] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        self.resources.append(Registered(args.typ, args.name, inputs, args.provider))
        state = dict(inputs)
        # Providers auto-name resources whose name is not set; do the same so names flow onward.
        if args.custom and not args.typ.startswith("pulumi:providers:"):
            state.setdefault("name", args.name)
        if args.typ == "gcp:container/cluster:Cluster":
            state.update(endpoint="203.0.113.10", masterAuth={"clusterCaCertificate": FAKE_CA})
        elif args.typ == "aws:eks/cluster:Cluster":
            state.update(
                endpoint="https://ABCDEF.gr7.us-east-1.eks.amazonaws.com",
                certificateAuthority={"data": FAKE_CA},
                vpcConfig={**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-0c1a5e7c1a5e7c1a5"},
            )
        elif args.typ == "aws:iam/role:Role":
            state.update(arn=f"arn:aws:iam::123456789012:role/{args.name}")
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state.update(latestVersion=1)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "gcp:container/getCluster:getCluster":
            return {
                "name": args.args["name"],
                "location": args.args.get("location"),
                "endpoint": "203.0.113.20",
                "masterAuths": [{"clusterCaCertificate": FAKE_CA}],
                **self.gke_cluster_lookup,
            }
        if args.token == "aws:eks/getCluster:getCluster":
            return {
                "name": args.args["name"],
                "endpoint": "https://ADOPTED.gr7.us-east-1.eks.amazonaws.com",
                "certificateAuthorities": [{"data": FAKE_CA}],
                "vpcConfig": {
                    "clusterSecurityGroupId": "sg-0adc0adc0adc0adc0",
                    "vpcId": "vpc-0adc0adc0adc0adc0",
                    "subnetIds": ["subnet-0adc0adc0adc0adc0"],
                },
            }
        if args.token == "aws:index/getPartition:getPartition":
            return {
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "id": "aws",
                "reverseDnsPrefix": "com.amazonaws",
            }
        raise AssertionError(f"unexpected invoke {args.token}")

    # --- queries used by the tests -------------------------------------------------------------

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]


def run_program(program: Callable[[], Any], mocks: CloudMocks | None = None) -> CloudMocks:
    """Run `program` under fresh mocks and wait until every registration and output has settled."""
    mocks = mocks or CloudMocks()
    pulumi.runtime.set_mocks(mocks, project="pulumi-llmd", stack="test", preview=False)

    @pulumi.runtime.test
    def _run() -> Any:
        return program()

    _run()
    return mocks
