"""Offline loading and the checked LoRA merge (probe.models), on tiny Qwen3 models built in-process.

The merge tests matter most: a teacher that is secretly the base (merge skipped, adapter not loaded)
would make every downstream teacher/base comparison measure nothing.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraModel

from probe.env.prompts import build_messages, render_prompt
from probe.models import (AdapterMismatchError, MergeCheckError, ModelNotFoundError,
                          check_adapter_fits, load_base_model, load_merged_teacher, load_tokenizer,
                          pick_device_dtype, resolve_local)
from tests.tiny_models import (LORA_TARGETS, save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3,
                        tiny_tokenizer)

pytestmark = pytest.mark.unit

N_LAYERS = 2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base dir (named like its id) and a random LoRA for it, shared by the module."""
    root = tmp_path_factory.mktemp("models")
    base = save_tiny_base(root / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), root / "lora", r=4, seed=1)
    return {"root": root, "base": base, "lora": lora}


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 5, 9, 40, 77, 200, 3, 3], [250, 0, 17, 18, 19, 20, 21, 22]])


# --- loading -----------------------------------------------------------------------------------


def test_load_base_model_offline_matches_saved(dirs: dict[str, Path]) -> None:
    before = os.environ.get("HF_HUB_OFFLINE")
    model = load_base_model(str(dirs["base"]), device="cpu")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(_logits(model, IDS), _logits(tiny_qwen3(seed=0), IDS))
    assert os.environ.get("HF_HUB_OFFLINE") == before, "offline() must restore the environment"


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"
    assert loaded.pad_token_id == loaded.eos_token_id is not None


def test_pick_device_dtype_cpu_is_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device_dtype() == (torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device_dtype("cuda")


# --- resolve_local -----------------------------------------------------------------------------


def _fake_cache(cache: Path, repo_id: str, src: Path, commit: str = "a" * 40) -> Path:
    """Lay `src` out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(src, snap)
    return snap


def test_resolve_local_directory(dirs: dict[str, Path]) -> None:
    assert resolve_local(str(dirs["base"])) == dirs["base"]
    assert resolve_local(str(dirs["lora"]), kind="adapter") == dirs["lora"]


def test_resolve_local_finds_hub_id_in_fake_cache(dirs: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    snap = _fake_cache(cache, "acme/tiny-qwen3", dirs["base"])
    assert resolve_local("acme/tiny-qwen3", cache_dir=cache) == snap
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_local("acme/tiny-qwen3") == snap
    model = load_base_model("acme/tiny-qwen3", device="cpu")  # through the env-named cache
    torch.testing.assert_close(_logits(model, IDS), _logits(tiny_qwen3(seed=0), IDS))
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub is the cache too
    assert resolve_local("acme/tiny-qwen3") == snap


def test_resolve_local_uses_the_only_snapshot_when_refs_are_missing(dirs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    snap = _fake_cache(tmp_path, "acme/tiny-qwen3", dirs["base"])
    shutil.rmtree(snap.parent.parent / "refs")
    assert resolve_local("acme/tiny-qwen3", cache_dir=tmp_path) == snap
    _fake_cache(tmp_path / "two", "acme/x", dirs["base"], commit="c" * 40)
    shutil.copytree(dirs["base"], tmp_path / "two" / "models--acme--x" / "snapshots" / ("d" * 40))
    shutil.rmtree(tmp_path / "two" / "models--acme--x" / "refs")
    with pytest.raises(ModelNotFoundError):  # ambiguous: two snapshots, no ref
        resolve_local("acme/x", cache_dir=tmp_path / "two")


def test_resolve_local_missing_hub_id_says_how_to_get_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_local("Qwen/Qwen3-4B")
    msg = str(exc.value)
    assert "huggingface-cli download Qwen/Qwen3-4B" in msg
    assert "HF_HOME" in msg and str(tmp_path / "empty-cache") in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_resolve_local_missing_path_and_incomplete_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_local(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_local(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        resolve_local(str(tmp_path / "empty"), kind="adapter")


# --- the merge ---------------------------------------------------------------------------------


def test_merged_teacher_changes_every_adapted_module_and_matches_peft(dirs: dict[str, Path]) -> None:
    teacher = load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu")
    base = tiny_qwen3(seed=0)
    assert type(teacher) is type(base) and not teacher.training
    assert not any("lora" in n for n, _ in teacher.named_parameters())
    t_mods, b_mods = dict(teacher.named_modules()), dict(base.named_modules())
    adapted = [n for n in b_mods if n.rsplit(".", 1)[-1] in LORA_TARGETS]
    assert len(adapted) == N_LAYERS * len(LORA_TARGETS)
    for name in adapted:
        assert not torch.equal(t_mods[name].weight, b_mods[name].weight), name
    # an independent unmerged PeftModel gives the same logits
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs["lora"])).eval()
    torch.testing.assert_close(_logits(teacher, IDS), _logits(peft_model, IDS),
                               atol=1e-5, rtol=1e-4)
    assert (_logits(teacher, IDS) - _logits(base, IDS)).abs().max() > 1e-2
    report = teacher.probe_merge_report
    assert report["adapted_modules"] == len(adapted) and report["merged_vs_unmerged"] < 1e-4


def test_merged_teacher_accepts_a_loaded_base(dirs: dict[str, Path]) -> None:
    teacher = load_merged_teacher(tiny_qwen3(seed=0), str(dirs["lora"]), base_id="tiny-qwen3")
    ref = load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu")
    torch.testing.assert_close(_logits(teacher, IDS), _logits(ref, IDS))


def test_bf16_merge_passes_and_a_skipped_bf16_merge_fails(dirs: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 (the GPU dtype) rounds the merge: tolerance must admit it, the weight check still bites."""
    teacher = load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu",
                                  dtype=torch.bfloat16)
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert teacher.probe_merge_report["merged_vs_unmerged"] < 5e-2
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(MergeCheckError, match="kept the base weight"):
        load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu",
                            dtype=torch.bfloat16)


def test_skipped_merge_unload_only_is_caught(dirs: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapter dropped instead of merged: the 'teacher' is the base. Must not pass."""
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(MergeCheckError, match="kept the base weight"):
        load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu")


def test_skipped_merge_returning_wrapped_base_is_caught(dirs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.model)
    with pytest.raises(MergeCheckError, match="still carries"):
        load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu")


def test_merge_with_wrong_logits_is_caught(dirs: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights changed but the model is not base + adapter (here: a corrupted final norm)."""
    orig = LoraModel.merge_and_unload

    def corrupt(self, *a, **k):
        merged = orig(self, *a, **k)
        with torch.no_grad():
            merged.model.norm.weight.mul_(3.0)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", corrupt)
    with pytest.raises(MergeCheckError, match="differ from the unmerged"):
        load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu")


def test_zero_init_adapter_is_caught(tmp_path: Path) -> None:
    """PEFT's default init (B = 0) is a no-op adapter: base weights would leak through."""
    model = get_peft_model(tiny_qwen3(seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "zero", save_embedding_layers=False)
    with pytest.raises(MergeCheckError, match="kept the base weight"):
        load_merged_teacher(tiny_qwen3(seed=0), str(tmp_path / "zero"), base_id="tiny-qwen3")


def test_check_false_skips_checks_but_merges(dirs: dict[str, Path]) -> None:
    teacher = load_merged_teacher(str(dirs["base"]), str(dirs["lora"]), device="cpu", check=False)
    assert (_logits(teacher, IDS) - _logits(tiny_qwen3(seed=0), IDS)).abs().max() > 1e-2


# --- adapter mismatch --------------------------------------------------------------------------


def test_adapter_for_other_hidden_size_is_rejected(dirs: dict[str, Path], tmp_path: Path) -> None:
    other = save_random_lora(tiny_qwen3(hidden_size=32, num_attention_heads=2, num_key_value_heads=1),
                             tmp_path / "small")
    with pytest.raises(AdapterMismatchError, match=r"model\.layers\.0\..*do not fit the base Linear"):
        load_merged_teacher(str(dirs["base"]), str(other), device="cpu")


def test_adapter_with_nonexistent_target_modules_is_rejected(dirs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(dirs["lora"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "qkv_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatchError, match="qkv_proj"):
        load_merged_teacher(str(dirs["base"]), str(bad), device="cpu")


def test_adapter_for_other_base_name_is_rejected(dirs: dict[str, Path], tmp_path: Path) -> None:
    other = save_random_lora(tiny_qwen3(seed=0), tmp_path / "o",
                             base_model_name_or_path="Qwen/Qwen3-8B")
    with pytest.raises(AdapterMismatchError, match=r"Qwen/Qwen3-8B.*tiny-qwen3"):
        load_merged_teacher(str(dirs["base"]), str(other), device="cpu")


def test_base_name_compared_by_basename_and_skipped_when_unknown() -> None:
    base = tiny_qwen3(seed=0)
    lora_keys = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
                 "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)}
    cfg = {"peft_type": "LORA", "target_modules": ["q_proj"],
           "base_model_name_or_path": "Qwen/Qwen3-4B"}
    snapshot = "/c/hub/models--Qwen--Qwen3-4B/snapshots/" + "b" * 40
    for base_id in ("Qwen/Qwen3-4B", "/data/models/Qwen3-4B", snapshot, None, ""):
        assert check_adapter_fits(base, cfg, lora_keys, base_id) == ["model.layers.0.self_attn.q_proj"]
    with pytest.raises(AdapterMismatchError, match="Qwen3-8B"):
        check_adapter_fits(base, cfg, lora_keys, "/c/hub/models--Qwen--Qwen3-8B/snapshots/" + "b" * 40)
    assert check_adapter_fits(base, {**cfg, "base_model_name_or_path": None}, lora_keys,
                              "anything") == ["model.layers.0.self_attn.q_proj"]
    with pytest.raises(AdapterMismatchError, match="lacks"):
        check_adapter_fits(base, cfg, {k.replace("layers.0", "layers.7"): v
                                       for k, v in lora_keys.items()}, None)


# --- tiny helpers and rendering ----------------------------------------------------------------


def test_tiny_model_is_seeded_and_tokenizer_fits_vocab() -> None:
    torch.testing.assert_close(_logits(tiny_qwen3(seed=3), IDS), _logits(tiny_qwen3(seed=3), IDS))
    assert not torch.equal(_logits(tiny_qwen3(seed=3), IDS), _logits(tiny_qwen3(seed=4), IDS))
    tok = tiny_tokenizer()
    assert len(tok) <= tiny_qwen3().config.vocab_size
    text = "def f(x):\n    return x  # ünïcode ✓"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_random_lora_has_nonzero_A_and_B(dirs: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(dirs["lora"] / "adapter_model.safetensors"))
    assert len(tensors) == 2 * N_LAYERS * len(LORA_TARGETS)
    for key, t in tensors.items():
        assert t.abs().min() > 0 or t.abs().mean() > 1e-3, key
    cfg = json.loads((dirs["lora"] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-qwen3" and cfg["r"] == 4


def test_chat_rendering_with_thinking_off(dirs: dict[str, Path]) -> None:
    tok = load_tokenizer(str(dirs["base"]))  # the template survives save / offline load
    problem = tiny_problems()[0]
    text = render_prompt(build_messages(problem, "simple_overwrite_tests"), tok)
    assert text.startswith("<|im_start|>system\n")
    assert "run_tests()" in text and "should pass all tests" not in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = tok.apply_chat_template(build_messages(problem, None), tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
    assert thinking.endswith("<|im_start|>assistant\n") and "<think>" not in thinking
    assert max(tok(text)["input_ids"]) < tiny_qwen3().config.vocab_size
