"""Kubernetes ComponentResources of the inference stack, each built from plain manifests by pure
functions (so the same data is tested, validated and rendered), composed by :mod:`.stack`."""
