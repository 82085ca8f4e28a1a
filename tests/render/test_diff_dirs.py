"""`python -m render.diff BASE_DIR HEAD_DIR` on the fixture renders in tests/render/fixtures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from render import diff

FIXTURES = Path(__file__).parent / "fixtures"
BASE, HEAD = FIXTURES / "base", FIXTURES / "head"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = diff.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stack(result: diff.RenderDiff, name: str) -> diff.StackDiff:
    return next(s for s in result.stacks if s.stack == name)


def changes_by_label(stack_diff: diff.StackDiff) -> dict[str, diff.ObjectChange]:
    return {c.key.label(): c for c in stack_diff.changes}


def fields(change: diff.ObjectChange) -> dict[str, diff.FieldChange]:
    return {f.path: f for f in change.fields}


def test_objects_added_removed_and_changed_per_stack() -> None:
    result = diff.diff_renders(diff.load_render(BASE), diff.load_render(HEAD))

    assert [s.stack for s in result.stacks] == ["gke", "kind", "onprem"]
    onprem = changes_by_label(stack(result, "onprem"))
    assert {label: c.status for label, c in onprem.items()} == {
        "Helm chart kgateway": "changed",
        "Secret llm-d/hf-token": "changed",
        "Service llm-d/legacy-epp": "removed",
        "Deployment llm-d/vllm-decode": "changed",
        "NetworkPolicy llm-d/epp-ingress": "added",
    }
    assert stack(result, "onprem").unchanged == 1  # the ConfigMap
    assert stack(result, "kind").changes == [] and stack(result, "kind").unchanged == 2
    gke = stack(result, "gke").changes
    assert [(c.status, c.key.label()) for c in gke] == [("added", "gcp:container/cluster:Cluster llmd")]


def test_changed_fields_use_dotted_paths_and_match_list_items_by_name() -> None:
    result = diff.diff_renders(diff.load_render(BASE), diff.load_render(HEAD))
    deployment = fields(changes_by_label(stack(result, "onprem"))["Deployment llm-d/vllm-decode"])
    container = "spec.template.spec.containers[vllm]"

    assert (deployment["spec.replicas"].old, deployment["spec.replicas"].new) == (1, 2)
    image = deployment[f"{container}.image"]
    assert (image.old, image.new) == ("vllm/vllm-openai:v0.10.0", "vllm/vllm-openai:v0.11.0")
    ucx = deployment[f"{container}.env[UCX_TLS].value"]
    assert (ucx.old, ucx.new) == ("rc,sm", "rc,sm,cuda_ipc")
    # An added env entry and an added container are listed field by field.
    added_env = deployment[f"{container}.env[VLLM_LOGGING_LEVEL].value"]
    assert (added_env.old, added_env.new) == (diff.MISSING, "DEBUG")
    sidecar = deployment["spec.template.spec.containers[routing-sidecar].args"]
    assert sidecar.new == ["-m", "sidecar", "--port", "8000"]
    # Unchanged fields (the model args, the GPU limit) do not appear.
    assert not any(path.startswith(f"{container}.args") for path in deployment)
    assert not any("resources" in path for path in deployment)

    helm = fields(changes_by_label(stack(result, "onprem"))["Helm chart kgateway"])
    assert list(helm) == ["version"]


def test_secret_values_never_reach_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(BASE), str(HEAD))
    code_md, out_md, _ = run(capsys, str(BASE), str(HEAD), "--format", "markdown")

    assert code == code_md == diff.EXIT_CHANGED
    for report in (out, out_md):
        for leaked in (
            "old-token-value",
            "new-token-value",
            "b2xkLXRva2Vu",
            "bmV3LXRva2Vu",
            "plain-but-secret",
        ):
            assert leaked not in report
        assert "data.token: <secret> → <secret> (secret value changed)" in report
        assert "env[HF_TOKEN].value: <secret> → <secret> (secret value changed)" in report
        assert "env[SIDECAR_TOKEN].value: (absent) → <secret>" in report


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        (("spec", "hfToken"), "a", "b"),
        (("values", "auth", "password"), "a", "b"),
        (("spec", "containers", "[vllm]", "env", "[AWS_SECRET_ACCESS_KEY]", "value"), "a", "b"),
        (("spec", "args", 3), "--hf-token=hf_" + "x" * 34, "--hf-token=hf_" + "y" * 34),
        (("data", "key.pem"), "-----BEGIN RSA PRIVATE KEY-----\nMII", "-----BEGIN RSA PRIVATE KEY-----\nMIJ"),
        (("spec", "accessKey"), "AKIA" + "A" * 16, "AKIA" + "B" * 16),
    ],
)
def test_secret_shaped_fields_and_values_are_masked(
    path: tuple[diff.Segment, ...], old: str, new: str
) -> None:
    [change] = diff._diff_values(old, new, path, secret=False)

    assert change.secret and change.old == change.new == diff.MASK
    assert "secret value changed" in diff.format_change(change)


def test_references_to_secrets_stay_visible() -> None:
    old = {"valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    new = {"valueFrom": {"secretKeyRef": {"name": "hf-token-v2", "key": "token"}}}

    [change] = diff._diff_values(old, new, ("env", "[HF_TOKEN]"), secret=False)

    assert change.path == "env[HF_TOKEN].valueFrom.secretKeyRef.name"
    assert (change.old, change.new, change.secret) == ("hf-token", "hf-token-v2", False)


def test_paths_quote_keys_that_are_not_identifiers() -> None:
    old = {"metadata": {"labels": {"llm-d.ai/role": "decode"}}}
    new = {"metadata": {"labels": {"llm-d.ai/role": "prefill"}}}

    [change] = diff._diff_values(old, new, (), secret=False)

    assert change.path == 'metadata.labels["llm-d.ai/role"]'


def test_unnamed_lists_are_aligned_so_one_insertion_is_one_change() -> None:
    def changes(old: Any, new: Any, path: tuple[diff.Segment, ...] = ("args",)) -> list[tuple[str, Any, Any]]:
        return [(c.path, c.old, c.new) for c in diff._diff_values(old, new, path, secret=False)]

    assert changes(["--a", "1"], ["--a", "2"]) == [("args[1]", "1", "2")]
    assert changes(["--a", "--c"], ["--a", "--b", "--c"]) == [("args[1]", diff.MISSING, "--b")]
    assert changes(["--a", "--b", "--c"], ["--a", "--c"]) == [("args[1]", "--b", diff.MISSING)]
    # A rule added in front of an RBAC list: only that rule, field by field, not every rule shifted.
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}
    assert changes([pods], [leases, pods], ("rules",)) == [
        ("rules[0].apiGroups", diff.MISSING, ["coordination.k8s.io"]),
        ("rules[0].resources", diff.MISSING, ["leases"]),
        ("rules[0].verbs", diff.MISSING, ["get"]),
    ]
    # An edited rule in place is diffed field by field.
    assert changes([pods], [{**pods, "verbs": ["get", "list"]}], ("rules",)) == [
        ("rules[0].verbs[1]", diff.MISSING, "list")
    ]
    assert changes({"port": 8000}, {"port": "8000"}, ()) == [("port", 8000, "8000")]


def test_single_stack_directories_compare_and_identical_renders_exit_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, str(BASE / "kind"), str(HEAD / "kind"))
    assert code == diff.EXIT_UNCHANGED
    assert out.endswith("no changes\n")

    code, out, _ = run(capsys, str(BASE / "onprem"), str(HEAD / "kind"))
    assert code == diff.EXIT_CHANGED
    assert "- Deployment llm-d/vllm-decode" in out and "+ Namespace llm-d" in out


def test_markdown_report_is_a_marked_pr_comment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "comment.md"
    code, stdout, _ = run(capsys, str(BASE), str(HEAD), "--format", "markdown", "--output", str(out_file))
    comment = out_file.read_text()

    assert code == diff.EXIT_CHANGED and stdout == ""
    assert comment.startswith(diff.COMMENT_MARKER + "\n")
    assert "| `onprem` | 1 | 1 | 3 | 1 |" in comment
    assert comment.count("<details>") == comment.count("</details>") == 2  # gke and onprem, not kind
    assert comment.count("```") % 2 == 0


def test_markdown_report_is_truncated_below_the_github_comment_limit(tmp_path: Path) -> None:
    base, head = tmp_path / "base" / "big", tmp_path / "head" / "big"
    for root, value in ((base, "a"), (head, "b")):
        root.mkdir(parents=True)
        index = []
        for i in range(400):
            name = f"cm-{i:03d}"
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": {f"k{j}": value * 40 for j in range(10)},
            }
            (root / f"{name}.yaml").write_text(json.dumps(body))
            index.append(
                {
                    "file": f"{name}.yaml",
                    "source": "k8s",
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "namespace": "llm-d",
                    "name": name,
                }
            )
        (root / "index.json").write_text(json.dumps(index))

    comment = diff.render_markdown(diff.diff_renders(diff.load_render(base), diff.load_render(head)))

    assert len(comment) < 65_536
    assert "Diff truncated" in comment
    assert comment.count("```") % 2 == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "index.json").unlink(), "no render found"),
        (lambda d: (d / "index.json").write_text("{not json"), "cannot read index"),
        (lambda d: (d / "index.json").write_text('{"file": "x"}'), "expected a JSON list"),
        (
            lambda d: (d / "index.json").write_text('[{"file": "a.yaml", "source": "k8s", "name": "a"}]'),
            "need 'apiVersion' and 'kind'",
        ),
        (
            lambda d: (d / "index.json").write_text(
                '[{"file": "a.yaml", "source": "terraform", "name": "a"}]'
            ),
            "source must be one of k8s, helm, yaml, cloud",
        ),
        (
            lambda d: (d / "index.json").write_text('[{"file": "../x.yaml", "source": "helm", "name": "a"}]'),
            "'file' must be a plain file name",
        ),
        (
            lambda d: (d / "Namespace--_cluster--llm-d.yaml").write_text("a: 1\n---\nb: 2\n"),
            "expected exactly one YAML mapping",
        ),
        (lambda d: (d / "Namespace--_cluster--llm-d.yaml").unlink(), "cannot read object"),
    ],
)
def test_malformed_renders_exit_2_with_a_specific_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mutate: object, message: str
) -> None:
    broken = tmp_path / "kind"
    shutil.copytree(BASE / "kind", broken)
    mutate(broken)  # type: ignore[operator]

    code, out, err = run(capsys, str(BASE / "kind"), str(broken))

    assert code == diff.EXIT_ERROR and out == ""
    assert message in err


def test_duplicate_objects_in_an_index_are_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "kind"
    shutil.copytree(BASE / "kind", broken)
    entries = json.loads((broken / "index.json").read_text())
    (broken / "index.json").write_text(json.dumps([*entries, entries[0]]))

    with pytest.raises(diff.DiffError, match="duplicate object Namespace llm-d"):
        diff.load_stack(broken)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        [str(BASE)],
        [str(BASE), str(HEAD), "--revs", "a", "b"],
        [str(BASE), str(HEAD), "--stacks", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            diff.main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "render.diff", str(BASE), str(HEAD)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == diff.EXIT_CHANGED, result.stderr
    assert "stack onprem: 1 added, 1 removed, 3 changed, 1 unchanged" in result.stdout
