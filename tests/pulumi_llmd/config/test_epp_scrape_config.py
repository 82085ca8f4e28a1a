"""`llmd:epp.refreshMetricsIdleInterval`: the bundled EPP's quiet-pod scrape period."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pulumi_llmd.config.models import EppConfig


def test_quiet_pods_are_scraped_every_half_second_by_default_and_zero_turns_it_off() -> None:
    assert EppConfig().refresh_metrics_idle_interval == 0.5
    assert EppConfig.model_validate({"refreshMetricsIdleInterval": 0}).refresh_metrics_idle_interval == 0


def test_a_negative_idle_interval_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="refreshMetricsIdleInterval"):
        EppConfig.model_validate({"refreshMetricsIdleInterval": -1})
