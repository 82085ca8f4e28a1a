"""LoRA adapters on a simulated server, as vLLM 0.32 serves them.

What is modelled (checked against a real vLLM 0.32 CPU server with the tiny model and adapters built
by ``tools/build_tiny_lora.py``; ``tests/slow/test_lora_vllm.py`` holds the two side by side):

* the adapters it knows: static ones from ``--lora-modules name=path`` (or vLLM's JSON form), and,
  with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, ones added and removed through
  ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` with vLLM's answers
  (vllm/entrypoints/openai/models/serving.py); ``/v1/models`` lists each under its base model;
* the batch limit: requests of at most ``--max-loras`` different adapters run at once; a waiting
  request for another adapter is passed over until a slot frees (vLLM's scheduler skips it and its
  ``num_requests_waiting_by_reason{reason="deferred"}`` counts it);
* GPU slots: ``max_loras`` resident adapters, least recently used evicted; putting an adapter in a
  slot is a *load*, which costs ``--lora-load-time`` of engine time and is counted (the benchmark's
  "adapter load events"; vLLM exports no such series, so the simulator's is named ``simulator:``);
* ``vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}``: a gauge whose
  value is the time of its last update, one series per label set ever seen (vLLM never removes
  them), both adapter labels listing the adapters with running requests. The EPP reads the newest
  sample (llm-d-router's vLLM extractor does the same). Deferred requests' adapters are not listed:
  what real vLLM 0.32 showed with 4 requests of one adapter running and 4 of another deferred.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class LoraError(Exception):
    """An answer of vLLM's adapter API other than success: status, message and vLLM's error type."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class LoraModule:
    name: str
    path: str


def parse_lora_modules(values: Iterable[str]) -> list[LoraModule]:
    """``--lora-modules`` as vLLM reads it (vllm/entrypoints/launchers/cli_args.py, LoRAParserAction):
    ``name=path``, or a JSON object with ``name`` and ``path`` (``base_model_name`` accepted)."""
    modules = []
    for item in values:
        if not item:
            continue
        if "=" in item and "," not in item:
            name, path = item.split("=", 1)
        else:
            try:
                entry = json.loads(item)
            except json.JSONDecodeError:
                raise ValueError(f"Invalid JSON format for --lora-modules: {item}") from None
            if (
                not isinstance(entry, dict)
                or not {"name", "path"} <= set(entry)
                or set(entry)
                - {
                    "name",
                    "path",
                    "base_model_name",
                }
            ):
                raise ValueError(f"Invalid fields for --lora-modules: {item}")
            name, path = str(entry["name"]), str(entry["path"])
        if not name or not path:
            raise ValueError(f"--lora-modules {item!r}: needs a name and a path")
        modules.append(LoraModule(name, path))
    return modules


class LoraRegistry:
    """The adapters a server serves, and which of them sit in its GPU slots."""

    def __init__(
        self, base_model: str, modules: Sequence[LoraModule], *, max_loras: int, runtime_updates: bool
    ) -> None:
        self.base_model = base_model
        self.max_loras = max_loras
        self.runtime_updates = runtime_updates
        self.adapters: dict[str, str] = {}
        for module in modules:
            if module.name == base_model:
                raise ValueError(f"The lora adapter '{module.name}' conflicts with a served base model.")
            if module.name in self.adapters:
                raise ValueError(f"--lora-modules names {module.name!r} twice")
            self.adapters[module.name] = module.path
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.loads = 0

    def serves(self, model: str) -> bool:
        return model == self.base_model or model in self.adapters

    def is_adapter(self, model: str) -> bool:
        return model in self.adapters

    # --- vLLM's run-time adapter API ---------------------------------------------------------------

    def load(self, body: object) -> str:
        """``POST /v1/load_lora_adapter``: the success text, or LoraError with vLLM's answer."""
        if not isinstance(body, dict):
            raise LoraError(400, "the request body must be a JSON object", "BadRequestError")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path or not isinstance(name, str) or not isinstance(path, str):
            raise LoraError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name == self.base_model:
            raise LoraError(
                400, f"The lora adapter '{name}' conflicts with a served base model.", "InvalidUserInput"
            )
        if name in self.adapters and not body.get("load_inplace"):
            raise LoraError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                "place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        self.adapters[name] = path
        self.resident.pop(name, None)  # new weights: the next use loads them again
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: object) -> str:
        """``POST /v1/unload_lora_adapter``."""
        if not isinstance(body, dict):
            raise LoraError(400, "the request body must be a JSON object", "BadRequestError")
        name = body.get("lora_name")
        if not name or not isinstance(name, str):
            raise LoraError(
                400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
            )
        if name not in self.adapters:
            raise LoraError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.adapters[name]
        self.resident.pop(name, None)
        return f"Success: LoRA adapter '{name}' removed successfully."

    # --- GPU slots ---------------------------------------------------------------------------------

    def fits(self, adapter: str, active: set[str]) -> bool:
        """Whether a request for ``adapter`` may join a batch running ``active`` adapters."""
        return adapter in active or len(active) < self.max_loras

    def use(self, adapter: str, active: set[str]) -> bool:
        """Put ``adapter`` in a slot for a request being admitted; True when that took a load (it was
        not resident). The least recently used adapter that no running request needs is evicted."""
        if adapter in self.resident:
            self.resident.move_to_end(adapter)
            return False
        if len(self.resident) >= self.max_loras:
            for candidate in list(self.resident):
                if candidate not in active:
                    del self.resident[candidate]
                    break
        self.resident[adapter] = None
        self.loads += 1
        return True
