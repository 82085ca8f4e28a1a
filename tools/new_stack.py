"""Make a stack of your own from one of the committed examples, without editing the example.

    pulumi stack init mine --secrets-provider passphrase      # writes stacks/Pulumi.mine.yaml (its salt)
    .venv/bin/python tools/new_stack.py onprem mine           # copies the example's llmd: config into it

The example's ``config:`` is merged into ``stacks/Pulumi.<name>.yaml`` and the keys Pulumi wrote at
``stack init`` (``encryptionsalt``, ``secretsprovider``, ``encryptedkey``) are kept. Secure values are
left out: the examples' ciphertexts are placeholders no other stack can decrypt, so the tool lists
them for ``pulumi config set --secret`` instead. It refuses to overwrite a committed example or a
stack that already has config, and to run before ``pulumi stack init`` (the stack file would lack
the salt that encrypts its secrets). Exit code 0 on success, 1 with a message otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
STACKS = ROOT / "stacks"
# The committed examples: never a target.
EXAMPLES = ("onprem", "kind", "gke", "eks")


class StackError(Exception):
    pass


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise StackError(f"{path} is not a YAML mapping")
    return document


def new_stack(example: str, name: str, stacks: Path = STACKS) -> list[str]:
    """Merge the example's plain config into the initialised stack ``name``; returns the secret keys
    the user still has to set."""
    if name in EXAMPLES:
        raise StackError(f"{name!r} is a committed example; pick another stack name")
    source = stacks / f"Pulumi.{example}.yaml"
    if not source.is_file():
        known = ", ".join(
            sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks.glob("Pulumi.*.yaml"))
        )
        raise StackError(f"no example {source.name} (stacks: {known})")
    target = stacks / f"Pulumi.{name}.yaml"
    if not target.is_file():
        raise StackError(
            f"{target} does not exist: run `pulumi stack init {name} --secrets-provider passphrase` first "
            "(it writes the stack file with the salt its secrets are encrypted with)"
        )
    document = _load(target)
    if document.get("config"):
        raise StackError(f"{target} already has config; this tool only fills a freshly initialised stack")
    plain: dict[str, Any] = {}
    secrets: list[str] = []
    for key, value in (_load(source).get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            secrets.append(key)
        else:
            plain[key] = value
    document["config"] = plain
    header = f"# Made from stacks/{source.name} by tools/new_stack.py; see that file for comments.\n"
    target.write_text(header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
    return secrets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("example", help=f"example stack to start from ({', '.join(EXAMPLES)})")
    parser.add_argument("name", help="your stack's name (after `pulumi stack init <name>`)")
    parser.add_argument("--stacks-dir", type=Path, default=STACKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        secrets = new_stack(args.example, args.name, args.stacks_dir)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"stacks/Pulumi.{args.name}.yaml: the {args.example} example's config, ready to edit")
    for key in secrets:
        print(f"set the secret {key}: pulumi config set --secret --stack {args.name} {key} <value>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
