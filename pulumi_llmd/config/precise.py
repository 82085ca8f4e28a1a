"""Precise prefix-cache routing (``llmd:epp.prefixCache: precise``): its choices and cross-key rules.

In precise mode every model-server pod publishes vLLM's KV-cache events over ZMQ and the EPP keeps an
exact index of which pod holds which block (docs/precise-prefix.md). The EPP looks up vLLM's own block
hashes, computed from the request's token ids, so three things must agree between the pods and the
EPP's config: the block size (vLLM ``--block-size``), the hash (``--prefix-caching-hash-algo``) and
its seed (``PYTHONHASHSEED``), and the EPP must tokenize with the model's own tokenizer. The stack
renders both sides from the same keys; this module says which combinations can work.

The models import the enums from here; the rules take the models duck-typed (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pulumi_llmd.config.errors import Problem

if TYPE_CHECKING:
    from pulumi_llmd.config.models import EppConfig, ModelConfig

# vLLM 0.32 vllm/config/cache.py PrefixCachingHashAlgo; the EPP's hasher implements all four
# (epp/kvevents/hashing.py).
PrefixCachingHashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
# What Python accepts as PYTHONHASHSEED (besides "random", which no EPP could reproduce).
MAX_HASH_SEED = 4_294_967_295


class PrefixCacheMode(StrEnum):
    """How the EPP knows what each model server has cached."""

    # approx-prefix-cache-producer: guessed from the EPP's own routing history (llm-d's default).
    APPROXIMATE = "approximate"
    # precise-prefix-cache-producer: the pods' vLLM KV events (--kv-events-config), indexed exactly.
    PRECISE = "precise"


class EppTokenizer(StrEnum):
    """Where the EPP's token-producer gets the model's tokenizer in precise mode."""

    # local.huggingFace: tokenizer.json and chat template downloaded from the Hub at start.
    HUB = "hub"
    # local.path: the model's own directory on its PVC, mounted read-only into the EPP.
    PATH = "path"
    # The bundled vLLM simulator's pseudo-tokenizer (model.engine simulator only).
    SIMULATOR = "simulator"


def effective_tokenizer(model: ModelConfig, epp: EppConfig) -> EppTokenizer:
    """``epp.tokenizer``, or what fits the model when unset: the simulator's for simulated pools, the
    Hub for ``hf://`` models, the model's PVC for ``pvc://`` models."""
    if epp.tokenizer is not None:
        return epp.tokenizer
    if model.engine.value == "simulator":
        return EppTokenizer.SIMULATOR
    return EppTokenizer.HUB if model.source == "hf" else EppTokenizer.PATH


def precise_problems(model: ModelConfig, epp: EppConfig, *, model_key: str, epp_key: str) -> list[Problem]:
    """What cannot work with ``epp.prefixCache`` as set; keys are named under ``model_key`` and
    ``epp_key`` (``model``/``epp`` in a stack config, ``model``/``settings`` in EndpointPicker args)."""
    mode = f"{epp_key}.prefixCache"
    if epp.prefix_cache is not PrefixCacheMode.PRECISE:
        if epp.tokenizer is not None:
            return [
                Problem(f"{epp_key}.tokenizer", f"applies to {mode} precise only (it is {epp.prefix_cache})")
            ]
        return []
    problems: list[Problem] = []
    if model.block_size is None:
        problems.append(
            Problem(
                f"{model_key}.blockSize",
                f"is required with {mode} precise: the EPP computes vLLM's block keys and must use the "
                "pods' block size, whose vLLM default differs by device (16 on CUDA, 128 on CPU)",
            )
        )
    if not model.enable_prefix_caching:
        problems.append(
            Problem(
                f"{model_key}.enablePrefixCaching",
                f"must be true with {mode} precise: vLLM publishes KV events only for blocks it caches",
            )
        )
    if epp.implementation.value == "upstream":
        # llm-d-router v0.10.0's token-producer has only the estimate, vllm (render API) and uds
        # backends, and its precise producer hashes with llm-d's own algorithms (cbor-fnv, xxh64),
        # not vLLM's block hashes: the config rendered here would not load there (docs/precise-prefix.md).
        problems.append(
            Problem(
                mode,
                f"precise needs {epp_key}.implementation bundled: the rendered token-producer "
                "(local/simulator tokenizers) and vLLM block-hash settings are this EPP's, which llm-d's "
                "v0.10.0 EPP image does not accept; use epp.config to hand it a config of its own",
            )
        )
    tokenizer = epp.tokenizer
    simulated = model.engine.value == "simulator"
    key = f"{epp_key}.tokenizer"
    if tokenizer is EppTokenizer.SIMULATOR and not simulated:
        problems.append(
            Problem(key, f"simulator fits {model_key}.engine simulator only (engine is {model.engine})")
        )
    elif tokenizer in (EppTokenizer.HUB, EppTokenizer.PATH) and simulated:
        problems.append(
            Problem(
                key,
                f"must be simulator (or unset) with {model_key}.engine simulator: the simulator's tokens "
                f"are its own pseudo-tokens, not the model's (got {tokenizer})",
            )
        )
    elif tokenizer is EppTokenizer.HUB and model.source != "hf":
        problems.append(
            Problem(
                key,
                f"hub needs an hf:// {model_key}.uri (got {model.uri}); use path to read the tokenizer from "
                "the model's PVC",
            )
        )
    elif tokenizer is EppTokenizer.PATH and model.source != "pvc":
        problems.append(
            Problem(
                key,
                f"path needs a pvc:// {model_key}.uri to mount (got {model.uri}); use hub for hf:// models",
            )
        )
    return problems


# The model-server environment precise mode sets itself: the hash seed, and the pod address the
# KV-event topic names (expanded by Kubernetes from the downward API).
PRECISE_POD_ENV = ("PYTHONHASHSEED", "POD_IP")


def pool_env_problems(env: Mapping[str, str], *, env_key: str, mode_key: str) -> list[Problem]:
    """A pool's own ``env`` must leave precise mode's variables alone (``model.hashSeed`` must reach
    the pods and the EPP alike)."""
    return [
        Problem(
            env_key,
            f"must not set {name} with {mode_key} precise (model.hashSeed and the pod's address set it)",
        )
        for name in PRECISE_POD_ENV
        if name in env
    ]
