"""The base of every stack-configuration model: the key conventions of ``Pulumi.<stack>.yaml``.

Keys are camelCase in the stack file and snake_case in Python (both accepted), unknown keys are
rejected so a typo fails loudly instead of falling back to a default, and a loaded config is
immutable. The platform sections (``gke.py``, ``eks.py``) and the stack model (``models.py``) share
it so that one stack file follows one set of rules.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)
