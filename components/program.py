"""The Pulumi program: validated config -> platform -> LlmdStack. ``__main__.py`` only calls main()."""

from __future__ import annotations

import pulumi

from components.config import load_stack_config
from components.provision import provision_platform
from components.stack import LlmdStack, LlmdStackArgs


def main() -> None:
    # Validation first: a bad config fails before any resource is registered.
    loaded = load_stack_config()
    config = loaded.config
    platform = provision_platform(config)
    stack = LlmdStack(config.name, LlmdStackArgs(config=config, platform=platform, hf_token=loaded.hf_token))
    pulumi.export("namespace", config.namespace)
    pulumi.export("gateway", stack.gateway_name)
    pulumi.export("inferencePool", stack.pool_name)
