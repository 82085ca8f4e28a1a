"""Container image references in the stack configuration: ``name[:tag][@sha256:<digest>]``.

The grammar is the one container runtimes parse (distribution/reference, ``reference.go`` and
``regexp.go``): an optional registry host with port, a lowercase repository path, an optional tag, an
optional digest. A reference the runtime cannot parse leaves the pod in ``InvalidImageName`` long
after ``pulumi up`` has returned, so the config refuses it up front and says which part is wrong.

Two rules go beyond the grammar, the same two the ``llmd-images-pinned`` policy applies to rendered
manifests (policy/llmd_rules.py ``image_pin_problem``):
- a digest is ``sha256:`` and 64 lowercase hex digits (what registries serve and go-digest accepts
  for sha256);
- an image is pinned: a tag other than ``latest``, or a digest. A missing tag pulls ``:latest``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# distribution/reference regexp.go, spelled with ASCII classes (Go's \w is ASCII; Python's is not).
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
NAME = re.compile(rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_REMOTE_NAME})")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# reference.go RepositoryNameTotalLengthMax (the path, without the registry).
MAX_PATH_LENGTH = 255

PINNING = "pin a version tag or a digest (name@sha256:<64 hex digits>)"


def image_reference_problem(reference: str) -> str | None:
    """Why ``reference`` is not a usable, pinned image reference; None when it is."""
    if not reference:
        return "is empty: expected [registry/]path[:tag][@sha256:<digest>]"
    if any(c.isspace() for c in reference):
        return "contains whitespace"
    name, at, digest = reference.partition("@")
    if at and not SHA256_DIGEST.fullmatch(digest):
        return "has a malformed digest: expected '@sha256:' and 64 lowercase hex digits"
    # A ':' after the last '/' starts the tag; one before it belongs to the registry's port.
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if tag is not None and not TAG.fullmatch(tag):
        return (
            f"has a malformed tag {tag[:40]!r}: 1 to 128 of letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    if not name:
        return "has no repository name"
    match = NAME.fullmatch(name)
    if match is None:
        if NAME.fullmatch(name.lower()):
            return "has upper-case letters in its repository path (repository paths are lowercase)"
        return "is not an image reference: expected [registry[:port]/]lowercase/path[:tag][@sha256:<digest>]"
    if len(match["path"]) > MAX_PATH_LENGTH:
        return f"has a repository path longer than {MAX_PATH_LENGTH} characters"
    if not at:
        if tag is None:
            return f"has no tag or digest (it would pull :latest); {PINNING}"
        if tag == "latest":
            return f"uses the moving tag 'latest' without a digest; {PINNING}"
    return None


def _check(reference: str) -> str:
    problem = image_reference_problem(reference)
    if problem is not None:
        raise ValueError(problem)
    return reference


# A config field holding an image: config errors read ``llmd:epp.image <problem> (got '...')``.
ImageReference = Annotated[str, AfterValidator(_check)]
