"""Reusable Pulumi components that put an llm-d-style inference stack on Kubernetes."""
