"""Entry point the Pulumi CLI runs for `--policy-pack policy`: serves the pack until the engine stops it."""

from llmd_pack import PACK_NAME, build_policies
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(PACK_NAME, policies=build_policies(), enforcement_level=EnforcementLevel.MANDATORY)
