"""argparse value types shared by the processes built on :mod:`epp.server` (the EPP's and the body
router's command lines): one definition, so both refuse the same bad values with the same words."""

from __future__ import annotations

import argparse
import itertools


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use true or false)")


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def distinct_ports(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flags when two listeners share a port: otherwise the second bind failed
    only after the config was loaded and discovery started, as "address already in use"."""
    flags = ("--grpc-port", "--grpc-health-port", "--metrics-port")
    for first, second in itertools.combinations(flags, 2):
        value = getattr(args, first[2:].replace("-", "_"))
        if value == getattr(args, second[2:].replace("-", "_")):
            parser.error(f"{first} and {second} are both {value}; each listener needs its own port")
