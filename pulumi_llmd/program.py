"""The Pulumi program: validated config -> platform -> LlmdStack. ``__main__.py`` only calls main()."""

from __future__ import annotations

import pulumi

from pulumi_llmd.components.stack import LlmdStack, LlmdStackArgs
from pulumi_llmd.config import load_stack_config
from pulumi_llmd.provision import provision_platform


def main() -> None:
    # Validation first: a bad config fails before any resource is registered.
    loaded = load_stack_config()
    config = loaded.config
    platform = provision_platform(config)
    stack = LlmdStack(config.name, LlmdStackArgs(config=config, platform=platform, hf_token=loaded.hf_token))
    pulumi.export("namespace", config.namespace)
    pulumi.export("gateway", stack.gateway_name)
    pulumi.export("inferencePool", stack.pool_name)
