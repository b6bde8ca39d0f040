"""The [compute] section reaches the switches generation and the δS adapter read."""
from __future__ import annotations

import pytest

import probe.generate as generate
from probe import flat
from probe.adapters import fused_svd
from probe.compute import ComputeConfig, apply
from probe.config import ConfigError, load_config

pytestmark = pytest.mark.unit


def test_apply_sets_and_restores_the_process_switches(monkeypatch):
    monkeypatch.setattr(generate, "COMPILE_ON_CUDA", False)
    monkeypatch.setattr(fused_svd, "FUSED_SVD", None)
    monkeypatch.setattr(flat, "FLAT_OPS", None)
    apply(ComputeConfig(compile_generation=True, fused_svd="off", flat_ops="on"))
    assert generate.COMPILE_ON_CUDA is True and fused_svd.FUSED_SVD is False
    assert flat.FLAT_OPS is True
    apply(ComputeConfig())
    assert generate.COMPILE_ON_CUDA is False and fused_svd.FUSED_SVD is None
    assert flat.FLAT_OPS is None


@pytest.mark.parametrize("key", ["compute.fused_svd", "compute.flat_ops"])
def test_a_bad_setting_is_a_config_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, {key: "maybe"})
