"""The [compute] section reaches the switches generation and the δS adapter read."""
from __future__ import annotations

import pytest

import probe.generate as generate
from probe.adapters import fused_svd
from probe.compute import ComputeConfig, apply
from probe.config import ConfigError, load_config

pytestmark = pytest.mark.unit


def test_apply_sets_and_restores_the_process_switches(monkeypatch):
    monkeypatch.setattr(generate, "COMPILE_ON_CUDA", False)
    monkeypatch.setattr(fused_svd, "FUSED_SVD", None)
    apply(ComputeConfig(compile_generation=True, fused_svd="off"))
    assert generate.COMPILE_ON_CUDA is True and fused_svd.FUSED_SVD is False
    apply(ComputeConfig())
    assert generate.COMPILE_ON_CUDA is False and fused_svd.FUSED_SVD is None


def test_a_bad_fused_setting_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="compute.fused_svd"):
        load_config(None, {"compute.fused_svd": "maybe"})
