"""Object-level diff between two offline renders: ``python -m render.diff``.

Reviewers see what a change does to the cluster without credentials: both sides are rendered with
``python -m render`` (one file per object plus ``index.json``) and compared object by
object, then field by field. Secret material never reaches the output: Secret data, env values of
secret-looking variables, secret-named keys and values shaped like credentials are shown as
``<secret>`` (with a note when they changed).

Usage::

    python -m render.diff BASE_DIR HEAD_DIR [--format text|markdown] [--output FILE]
    python -m render.diff --revs BASE_REV HEAD_REV [--stacks onprem kind] [...]

``BASE_DIR``/``HEAD_DIR`` are either one stack's render directory (holding ``index.json``) or a
render root holding ``<stack>/index.json``. Exit code: 0 no change, 1 changed, 2 error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

EXIT_UNCHANGED = 0
EXIT_CHANGED = 1
EXIT_ERROR = 2

SOURCES = ("k8s", "helm", "yaml", "cloud")
# Marks the PR comment so the workflow updates its own comment instead of adding one per push.
COMMENT_MARKER = "<!-- pulumi-llmd:render-diff -->"
# GitHub rejects comments above 65,536 characters; keep room for the truncation note.
MARKDOWN_LIMIT = 60_000
RENDER_TIMEOUT_S = 900
GIT_TIMEOUT_S = 120
MASK = "<secret>"

_SECRET_KEY = re.compile(r"pass(word|wd)?|token|secret|api[-_]?key|private[-_]?key|credential", re.I)
# Keys that hold a reference to a secret (its name, path or selector), not the secret itself.
_SECRET_REFERENCE_KEY = re.compile(r"(name|ref|path|file|namespace|selector)s?$", re.I)
_SECRET_VALUE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}"  # Hugging Face token
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"  # GitHub token
    r"|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\b(AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style API key
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."  # JWT
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


class DiffError(Exception):
    """Bad input (missing or malformed render, unknown revision, failed render); exit code 2."""


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()


# --------------------------------------------------------------------------------------------------
# Loading a render
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identity of one rendered object across revisions (the apiVersion's version may change)."""

    source: str
    kind: str  # Kubernetes "group/Kind" ("Kind" for the core group); Pulumi type for cloud resources
    namespace: str
    name: str

    def label(self) -> str:
        if self.source == "helm":
            return f"Helm chart {self.name}"
        if self.source == "yaml":
            return f"remote YAML {self.name}"
        if self.source == "cloud":
            return f"{self.kind} {self.name}"
        kind = self.kind.rsplit("/", 1)[-1]
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"


@dataclass(frozen=True)
class StoredObject:
    """One object as read back from a render directory (the written side of engine.RenderedObject)."""

    key: ObjectKey
    file: str
    body: dict[str, Any]


Render = dict[str, dict[ObjectKey, StoredObject]]  # stack -> objects


def load_render(path: Path) -> Render:
    """Read a render root (``<stack>/index.json``) or a single stack's render directory."""
    if not path.is_dir():
        raise DiffError(f"{path}: not a directory")
    if (path / "index.json").is_file():
        return {path.name: load_stack(path)}
    stacks = sorted(p for p in path.iterdir() if (p / "index.json").is_file())
    if not stacks:
        raise DiffError(f"{path}: no render found (expected index.json or <stack>/index.json)")
    return {p.name: load_stack(p) for p in stacks}


def load_stack(stack_dir: Path) -> dict[ObjectKey, StoredObject]:
    index_path = stack_dir / "index.json"
    try:
        entries = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DiffError(f"{index_path}: cannot read index: {exc}") from exc
    if not isinstance(entries, list):
        raise DiffError(f"{index_path}: expected a JSON list of objects, got {type(entries).__name__}")
    objects: dict[ObjectKey, StoredObject] = {}
    for position, entry in enumerate(entries):
        where = f"{index_path}[{position}]"
        key = _object_key(entry, where)
        if key in objects:
            raise DiffError(f"{where}: duplicate object {key.label()} (also in {objects[key].file})")
        file_name = entry["file"]
        if not isinstance(file_name, str) or Path(file_name).name != file_name:
            raise DiffError(f"{where}: 'file' must be a plain file name, got {file_name!r}")
        objects[key] = StoredObject(key, file_name, _read_object(stack_dir / file_name))
    return objects


def _object_key(entry: Any, where: str) -> ObjectKey:
    if not isinstance(entry, dict):
        raise DiffError(f"{where}: expected an object, got {type(entry).__name__}")
    for required in ("file", "source", "name"):
        if not entry.get(required):
            raise DiffError(f"{where}: missing {required!r}")
    source = entry["source"]
    if source not in SOURCES:
        raise DiffError(f"{where}: source must be one of {', '.join(SOURCES)}, got {source!r}")
    kind = ""
    if source == "k8s":
        if not entry.get("kind") or not entry.get("apiVersion"):
            raise DiffError(f"{where}: Kubernetes objects need 'apiVersion' and 'kind'")
        group = entry["apiVersion"].rpartition("/")[0]
        kind = f"{group}/{entry['kind']}" if group else entry["kind"]
    elif source == "cloud":
        if not entry.get("pulumiType"):
            raise DiffError(f"{where}: cloud resources need 'pulumiType'")
        kind = entry["pulumiType"]
    return ObjectKey(source, kind, entry.get("namespace") or "", entry["name"])


def _read_object(path: Path) -> dict[str, Any]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise DiffError(f"{path}: cannot read object: {exc}") from exc
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise DiffError(f"{path}: expected exactly one YAML mapping, found {len(documents)} document(s)")
    return documents[0]


# --------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------

Segment = str | int  # dict key, list index, or "[name]" selector for named list items


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # MISSING when the field was added; secret leaves already replaced by MASK
    new: Any  # MISSING when the field was removed
    secret: bool = False  # something in old/new was hidden


@dataclass
class ObjectChange:
    key: ObjectKey
    status: Literal["added", "removed", "changed"]
    fields: list[FieldChange] = field(default_factory=list)


@dataclass
class StackDiff:
    stack: str
    changes: list[ObjectChange]
    unchanged: int

    def count(self, status: str) -> int:
        return sum(1 for c in self.changes if c.status == status)


@dataclass
class RenderDiff:
    stacks: list[StackDiff]

    @property
    def changed(self) -> bool:
        return any(s.changes for s in self.stacks)


def diff_renders(base: Render, head: Render) -> RenderDiff:
    stacks = sorted(set(base) | set(head))
    return RenderDiff([diff_stack(s, base.get(s, {}), head.get(s, {})) for s in stacks])


def diff_stack(
    stack: str, base: dict[ObjectKey, StoredObject], head: dict[ObjectKey, StoredObject]
) -> StackDiff:
    changes: list[ObjectChange] = []
    unchanged = 0
    for key in sorted(set(base) | set(head)):
        if key not in head:
            changes.append(ObjectChange(key, "removed"))
        elif key not in base:
            changes.append(ObjectChange(key, "added"))
        else:
            secret_object = key.source == "k8s" and key.kind == "Secret"
            fields = list(_diff_values(base[key].body, head[key].body, (), secret_object))
            if fields:
                changes.append(ObjectChange(key, "changed", fields))
            else:
                unchanged += 1
    return StackDiff(stack, changes, unchanged)


def _diff_values(old: Any, new: Any, path: tuple[Segment, ...], secret: bool) -> Iterator[FieldChange]:
    secret = secret or _is_secret_path(path)
    # A mapping or named list that appears or disappears is listed field by field, like an edit.
    if old is MISSING and (isinstance(new, dict) or _by_name(new)) and new:
        old = type(new)()
    elif new is MISSING and (isinstance(old, dict) or _by_name(old)) and old:
        new = type(old)()
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            yield from _diff_values(old.get(key, MISSING), new.get(key, MISSING), (*path, key), secret)
        return
    if isinstance(old, list) and isinstance(new, list):
        old_named, new_named = _by_name(old), _by_name(new)
        if old_named is not None and new_named is not None:
            for name in list(old_named) + [n for n in new_named if n not in old_named]:
                yield from _diff_values(
                    old_named.get(name, MISSING), new_named.get(name, MISSING), (*path, f"[{name}]"), secret
                )
            return
        yield from _diff_positional(old, new, path, secret)
        return
    if old != new or type(old) is not type(new):
        shown_old, shown_new = _masked(old, path, secret), _masked(new, path, secret)
        hidden = shown_old is not old or shown_new is not new
        yield FieldChange(_format_path(path), shown_old, shown_new, hidden)


def _diff_positional(
    old: list[Any], new: list[Any], path: tuple[Segment, ...], secret: bool
) -> Iterator[FieldChange]:
    """Align two unnamed lists (args, RBAC rules, ingress rules) so an insertion shows as one item.

    Changed and added items carry their index in the new list, removed items their index in the old.
    """
    matcher = difflib.SequenceMatcher(
        a=[_canonical(v) for v in old], b=[_canonical(v) for v in new], autojunk=False
    )
    for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(old_end - old_start, new_end - new_start)
        for offset in range(paired):
            yield from _diff_values(
                old[old_start + offset], new[new_start + offset], (*path, new_start + offset), secret
            )
        for index in range(old_start + paired, old_end):
            yield from _diff_values(old[index], MISSING, (*path, index), secret)
        for index in range(new_start + paired, new_end):
            yield from _diff_values(MISSING, new[index], (*path, index), secret)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _masked(value: Any, path: tuple[Segment, ...], secret: bool) -> Any:
    """``value`` with every secret leaf replaced by MASK; the same object when nothing is hidden."""
    if value is MISSING:
        return value
    if secret or _is_secret_path(path):
        return MASK
    if isinstance(value, dict):
        items = {k: _masked(v, (*path, k), False) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list):
        named = _by_name(value)
        segments: list[Segment] = [f"[{n}]" for n in named] if named is not None else list(range(len(value)))
        masked = [_masked(v, (*path, seg), False) for v, seg in zip(value, segments, strict=True)]
        return value if all(m is v for m, v in zip(masked, value, strict=True)) else masked
    if isinstance(value, str) and _SECRET_VALUE.search(value):
        return MASK
    return value


def _by_name(items: Any) -> dict[str, Any] | None:
    """Index a list of named mappings (containers, env, ports, volumes) by name, if it is one."""
    if not isinstance(items, list):
        return None
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        return None
    return dict(zip(names, items, strict=True))  # type: ignore[arg-type]


def _is_secret_path(path: tuple[Segment, ...]) -> bool:
    if not path:
        return False
    last = path[-1]
    if isinstance(last, str) and not last.startswith("["):
        if last in ("data", "stringData") and len(path) == 1:
            return False  # decided by the object kind (Secret) in diff_stack
        if _is_secret_key(last):
            return True
    # An env entry whose variable name looks secret: env[HF_TOKEN].value
    return len(path) >= 2 and path[-1] == "value" and _is_secret_selector(path[-2])


def _is_secret_selector(segment: Segment) -> bool:
    return isinstance(segment, str) and segment.startswith("[") and _is_secret_key(segment[1:-1])


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _SECRET_REFERENCE_KEY.search(key)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _format_path(path: tuple[Segment, ...]) -> str:
    out = ""
    for segment in path:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif segment.startswith("["):
            out += segment
        elif _PLAIN_KEY.match(segment):
            out += f".{segment}" if out else segment
        else:
            out += f"[{json.dumps(segment)}]"
    return out or "(object)"


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

_STATUS_SIGN = {"added": "+", "removed": "-", "changed": "~"}
_VALUE_WIDTH = 160


def format_value(value: Any) -> str:
    if value is MISSING:
        return "(absent)"
    if value == MASK:
        return MASK
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def format_change(change: FieldChange) -> str:
    old, new = format_value(change.old), format_value(change.new)
    note = " (secret value changed)" if change.secret and old == new else ""
    return f"{change.path}: {old} → {new}{note}"


def summary_line(stack: StackDiff) -> str:
    return (
        f"{stack.count('added')} added, {stack.count('removed')} removed, "
        f"{stack.count('changed')} changed, {stack.unchanged} unchanged"
    )


def render_text(diff: RenderDiff) -> str:
    lines: list[str] = []
    for stack in diff.stacks:
        lines.append(f"stack {stack.stack}: {summary_line(stack)}")
        lines.extend(_object_lines(stack, indent="  "))
    if not diff.changed:
        lines.append("no changes")
    return "\n".join(lines) + "\n"


def _object_lines(stack: StackDiff, indent: str) -> Iterator[str]:
    for change in stack.changes:
        yield f"{indent}{_STATUS_SIGN[change.status]} {change.key.label()}"
        for field_change in change.fields:
            yield f"{indent}    {format_change(field_change)}"


_TRUNCATED = "\n```\n\n</details>\n\n**Diff truncated**: run `python -m render.diff` locally.\n"


def render_markdown(diff: RenderDiff, title: str = "Rendered manifests diff") -> str:
    head = [COMMENT_MARKER, f"### {title}", ""]
    if not diff.changed:
        head += [f"No object changes in {len(diff.stacks)} stack(s).", ""]
    head += ["| stack | added | removed | changed | unchanged |", "|---|---:|---:|---:|---:|"]
    for stack in diff.stacks:
        head.append(
            f"| `{stack.stack}` | {stack.count('added')} | {stack.count('removed')} "
            f"| {stack.count('changed')} | {stack.unchanged} |"
        )
    body: list[str] = []
    for stack in diff.stacks:
        if not stack.changes:
            continue
        body += ["", f"<details><summary><code>{stack.stack}</code>: {summary_line(stack)}</summary>", ""]
        body += ["```diff", *_object_lines(stack, indent=""), "```", "", "</details>"]
    footer = [
        "",
        "",
        "<sub>Offline render under the Pulumi mock engine (<code>python -m render.diff</code>); "
        "Helm charts and remote YAML are compared by chart, version and values only. "
        "Secret values are never shown.</sub>",
    ]
    text = "\n".join(head + body)
    if len(text) > MARKDOWN_LIMIT:
        cut = text.rfind("\n", 0, MARKDOWN_LIMIT)
        text = text[:cut] + _TRUNCATED
    return text + "\n".join(footer) + "\n"


# --------------------------------------------------------------------------------------------------
# Rendering git revisions
# --------------------------------------------------------------------------------------------------


# Where a revision keeps its offline renderer: this layout's, then the layout before the reshape
# (components/render.py), so a pull request that crosses the move still gets its diff.
_RENDERERS = (("render/__main__.py", "render"), ("components/render.py", "components.render"))


def render_revision(repo: Path, rev: str, stacks: Sequence[str] | None, workdir: Path) -> Path:
    """Render ``rev`` in a worktree under ``workdir``; returns the render root (``<stack>/index.json``)."""
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", what=f"revision {rev!r}")
    tree, out = workdir / "tree", workdir / "render"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit, what="git worktree add")
    try:
        available = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in tree.glob("stacks/Pulumi.*.yaml"))
        wanted = [s for s in (stacks or available) if s in available]
        out.mkdir(parents=True)
        if not wanted:
            return out  # the stacks do not exist at this revision: every object is added/removed
        module = next((m for path, m in _RENDERERS if (tree / path).is_file()), None)
        if module is None:
            raise DiffError(f"revision {rev} ({commit[:12]}) has no offline renderer to render with")
        # The worktree's own sources must win over the checkout on the dev venv's path.
        env = dict(os.environ, PYTHONPATH=str(tree))
        command = [sys.executable, "-m", module, *wanted, "--out", str(out)]
        try:
            result = subprocess.run(
                command, cwd=tree, env=env, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise DiffError(f"rendering {rev} timed out after {RENDER_TIMEOUT_S} s") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
            raise DiffError(f"rendering {rev} ({commit[:12]}) failed (exit {result.returncode}):\n{tail}")
        return out
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT_S,
        )


def _git(repo: Path, *args: str, what: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise DiffError(f"{what}: git did not answer within {GIT_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        detail = result.stderr.strip() or "not found"
        raise DiffError(f"{what}: {detail}")
    return result.stdout.strip()


def _load_revision_render(render_root: Path) -> Render:
    """The stacks a revision rendered; none when it had none of the requested stacks."""
    return load_render(render_root) if any(render_root.glob("*/index.json")) else {}


def diff_revisions(repo: Path, base: str, head: str, stacks: Sequence[str] | None) -> RenderDiff:
    with tempfile.TemporaryDirectory(prefix="llmd-diff-") as tmp:
        base_root = render_revision(repo, base, stacks, Path(tmp) / "base")
        head_root = render_revision(repo, head, stacks, Path(tmp) / "head")
        diff = diff_renders(_load_revision_render(base_root), _load_revision_render(head_root))
    if not diff.stacks:
        wanted = ", ".join(stacks) if stacks else "any stack"
        raise DiffError(f"neither {base} nor {head} has stacks/Pulumi.<stack>.yaml for {wanted}")
    return diff


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m render.diff",
        description="Compare two offline renders object by object. Exit 0: no change, 1: changed, 2: error.",
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="BASE_DIR HEAD_DIR (render root or stack dir)")
    parser.add_argument("--revs", nargs=2, metavar=("BASE", "HEAD"), help="render two git revisions")
    parser.add_argument("--stacks", nargs="+", metavar="STACK", help="with --revs: only these stacks")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="with --revs: the git repository")
    parser.add_argument("--format", choices=("text", "markdown"), default="text")
    parser.add_argument("--output", type=Path, help="write the report here instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.revs) == bool(args.dirs):
        parser.error("give either BASE_DIR HEAD_DIR or --revs BASE HEAD")
    if args.dirs and len(args.dirs) != 2:
        parser.error(f"expected BASE_DIR HEAD_DIR, got {len(args.dirs)} path(s)")
    if args.stacks and not args.revs:
        parser.error("--stacks only applies with --revs")
    try:
        if args.revs:
            diff = diff_revisions(args.repo, args.revs[0], args.revs[1], args.stacks)
        else:
            base, head = load_render(Path(args.dirs[0])), load_render(Path(args.dirs[1]))
            if len(base) == 1 and len(head) == 1 and set(base) != set(head):
                # Two single-stack directories with different names: compare them as one stack.
                head = {next(iter(base)): next(iter(head.values()))}
            diff = diff_renders(base, head)
    except DiffError as exc:
        print(f"render.diff: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report = render_markdown(diff) if args.format == "markdown" else render_text(diff)
    if args.output:
        args.output.write_text(report)
    else:
        sys.stdout.write(report)
    return EXIT_CHANGED if diff.changed else EXIT_UNCHANGED


if __name__ == "__main__":
    raise SystemExit(main())
