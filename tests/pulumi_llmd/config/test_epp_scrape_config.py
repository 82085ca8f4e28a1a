"""`llmd:epp.refreshMetricsIdleInterval`: the bundled EPP's quiet-pod scrape period."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pulumi_llmd.config.models import EppConfig


def test_quiet_pods_are_scraped_every_half_second_by_default_and_zero_turns_it_off() -> None:
    assert EppConfig().refresh_metrics_idle_interval == 0.5
    assert EppConfig.model_validate({"refreshMetricsIdleInterval": 0}).refresh_metrics_idle_interval == 0


@pytest.mark.parametrize("idle", [0.01, -1])
def test_an_idle_interval_below_the_scrape_interval_is_refused_by_name(idle: float) -> None:
    with pytest.raises(ValidationError, match="refreshMetricsIdleInterval"):
        EppConfig.model_validate({"refreshMetricsInterval": 0.05, "refreshMetricsIdleInterval": idle})
