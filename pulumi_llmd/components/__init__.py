"""Kubernetes ComponentResources of the inference stack, composed by :mod:`.stack` (``LlmdStack``).

Each component takes narrow args validated by its model in :mod:`.inputs` (built from the config
models, which hold every default), gets providers and dependencies through ``pulumi.ResourceOptions``
(:func:`.k8sobjects.child_options`), and builds its objects as plain manifests with pure functions, so
the same data is tested, validated and rendered. The components of the multi-language package take
the generated ``TypedDict`` args of :mod:`.args`. Conventions and reference: ``docs/components.md``.
"""
