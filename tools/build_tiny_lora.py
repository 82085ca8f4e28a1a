"""Build tiny LoRA adapters for the tiny local model (``tools/build_tiny_model.py``): PEFT-format
directories (``adapter_config.json`` + ``adapter_model.safetensors``) with seeded random weights on
the attention projections, so vLLM can load them with ``--enable-lora --lora-modules name=dir``.
No network access, no ``peft`` package: the files are written the way PEFT saves a LoRA adapter.

Run it with the vLLM virtualenv (it needs torch and safetensors), after building the model:

    .venv-vllm/bin/python tools/build_tiny_lora.py build/tiny-llama build/tiny-lora --names sql chat

Each adapter gets its own seed (from its name), so different adapters change the model's output
differently; ``lora_B`` is not zero (PEFT initialises it to zero, which would make an adapter that
changes nothing). A directory that already holds a complete adapter for the same base is left alone.

What vLLM 0.32 reads (``vllm/lora/peft_helper.py`` and ``vllm/lora/lora_model.py``): ``r``,
``lora_alpha``, ``target_modules`` and ``bias`` from the config, and tensors named
``base_model.model.<module>.lora_A.weight`` (``r x in``) / ``.lora_B.weight`` (``out x r``). Its
filesystem LoRA resolver also checks ``peft_type == "LORA"`` and ``base_model_name_or_path``
against the served model (``vllm/plugins/lora_resolvers/filesystem_resolver.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

RANK = 8
ALPHA = 16
TARGET_MODULES = ("q_proj", "v_proj")
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_config(base_model: str) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def is_complete(out: Path, base_model: str) -> bool:
    if not all((out / name).is_file() for name in REQUIRED_FILES):
        return False
    config = json.loads((out / "adapter_config.json").read_text())
    return bool(config.get("base_model_name_or_path") == base_model)


def seed_of(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def build(model_dir: Path, out: Path, name: str, base_model: str) -> None:
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or hidden // heads)
    out_features = {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}
    generator = torch.Generator().manual_seed(seed_of(name))
    tensors = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            # Large enough to move the logits of a random-weight model, small enough to stay finite.
            lora_a = torch.randn(RANK, hidden, generator=generator) * 0.05
            lora_b = torch.randn(out_features[module], RANK, generator=generator) * 0.05
            tensors[f"{prefix}.lora_A.weight"] = lora_a.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = lora_b.to(torch.bfloat16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(base_model), indent=2) + "\n")
    print(f"tiny LoRA {name!r}: rank {RANK}, {len(tensors)} tensors -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the tiny model's directory (e.g. build/tiny-llama)")
    parser.add_argument("out", type=Path, help="parent directory of the adapters (one subdirectory each)")
    parser.add_argument("--names", nargs="+", default=["tiny-lora"], help="adapter names (directory names)")
    parser.add_argument(
        "--base-model",
        default=None,
        help="base_model_name_or_path to record (default: the model directory as given); vLLM's "
        "filesystem resolver loads an adapter only when this equals the served model's path",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if an adapter is complete")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} has no config.json: build it first with tools/build_tiny_model.py")
    base_model = args.base_model or str(args.model)
    for name in args.names:
        target = args.out / name
        if is_complete(target, base_model) and not args.force:
            print(f"tiny LoRA {name!r} already built in {target}")
            continue
        build(args.model, target, name, base_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
