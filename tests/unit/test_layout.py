"""The structure the experiment relies on: one arm registry, run paths in the artifact layer,
checks that read artifacts only, and no library module that needs the tests."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from probe.arms import (ARMS, GRPO_ARMS, REPLAY_ARMS, Arm, arm_names, arms, control_arms,
                        get_arm)
from probe.artifacts import config_hash
from probe.layout import (PHASE1_SECTIONS, GRPOPaths, Phase1Paths, arm_dir, arm_seed_dirs,
                          run_paths)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "probe"


class _World:
    def identity(self) -> dict:
        return {"name": "fake", "model_id": "m"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (lazy imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_replay_arms_project_what_their_entry_says():
    """The replay arms keep their names (artifact paths) and project what the spec says; the
    stage reads `direction` from the entry, never from the name."""
    assert REPLAY_ARMS == ("vanilla", "projected", "projected_random", "projected_shuffled")
    assert {n: get_arm("replay", n).direction for n in REPLAY_ARMS} == {
        "vanilla": None, "projected": "nll", "projected_random": "random",
        "projected_shuffled": "shuffled"}
    assert {c: a.name for c, a in control_arms("replay").items()} == {
        "random": "projected_random", "shuffled": "projected_shuffled"}
    assert all(a.target == "grad" for a in arms("replay").values())
    assert all(a.why for a in ARMS)
    # R6's LoRA arms are registry entries too, but never in Phase 1's or R5's arm lists
    assert {(a.trainer, a.name) for a in ARMS if a.adapter == "lora"} == {
        ("replay", "lora_vanilla"), ("grpo", "lora_vanilla"), ("grpo", "lora_projected")}
    assert not any(a.default for a in ARMS if a.adapter == "lora")


def test_grpo_arms_are_registry_entries():
    assert list(GRPO_ARMS) == ["vanilla", "projected", "projected_update", "projected_random",
                               "projected_shuffled", "projected_grpo_vhack", "projected_refresh"]
    assert [n for n, a in GRPO_ARMS.items() if a.refresh] == ["projected_refresh"]
    assert GRPO_ARMS["projected_update"].target == "update"
    assert "projected_grpo_vhack" not in arm_names("grpo", default_only=True)


def test_an_arm_the_trainer_cannot_run_is_refused():
    with pytest.raises(ValueError, match="replay trainer projects a fixed direction"):
        Arm("x", "replay", "nll", "update")
    with pytest.raises(ValueError, match="replay trainer"):
        Arm("x", "replay", "refreshed")
    with pytest.raises(ValueError, match="adapter 'dora' is not one of"):
        Arm("x", "grpo", adapter="dora")
    with pytest.raises(ValueError, match="unknown replay arm 'projected_update'"):
        get_arm("replay", "projected_update")
    with pytest.raises(ValueError, match="unknown trainer"):
        arms("sft")


def test_config_defaults_and_validation_come_from_the_registry():
    from probe.config import ConfigError, load_config

    cfg = load_config()
    assert cfg.arms == arm_names("replay", default_only=True)
    assert cfg.grpo.arms == arm_names("grpo", default_only=True)
    with pytest.raises(ConfigError, match="arms: 'projected_update' is not one of"):
        load_config(overrides={"arms": ["vanilla", "projected_update"]})  # a GRPO-only arm


def test_cli_offers_the_registry_arms(capsys):
    from probe.cli import main

    with pytest.raises(SystemExit):
        main(["replay", "--arm", "projected_nope"])
    assert "projected_shuffled" in capsys.readouterr().err


def test_phase1_sections_are_the_phase1_config_fields():
    """`run_paths` keys the run by these sections: one missing would let two configs share a
    run directory, one extra would move every cached run."""
    from probe.stages.phase1 import Phase1Config

    assert PHASE1_SECTIONS == tuple(f.name for f in fields(Phase1Config))


def test_run_paths_are_the_phase1_config_hash():
    """The hash the run directory has always had: world identity + every Phase 1 section."""
    from probe.config import load_config

    cfg = load_config(overrides={"pool.steps": 3, "arms": ["vanilla"]})
    expected = config_hash(_World().identity(), {s: getattr(cfg, s) for s in PHASE1_SECTIONS})
    paths = run_paths(_World(), cfg, "o")  # type: ignore[arg-type]
    assert paths.root == Path("o") / "probe_distill" / expected and paths.seed == cfg.replay.seed


def test_arm_directories(tmp_path):
    p = Phase1Paths(tmp_path, 41)
    assert p.arm("projected_random") == tmp_path / "projected_random_seed41"
    assert p.student_eval_rows("vanilla") == tmp_path / "vanilla_seed41" / "student_eval.jsonl.gz"
    g = GRPOPaths(tmp_path / "run", tmp_path / "t")
    assert g.arm("projected", 5) == arm_dir(tmp_path / "run", "projected", 5)
    assert g.teacher(5) == tmp_path / "t" / "teacher_seed5"
    for name in ("projected_seed5", "projected_seed41", "projected_random_seed5", "projected_seedx"):
        (tmp_path / "run" / name).mkdir(parents=True)
    assert list(arm_seed_dirs(tmp_path / "run", "projected")) == [5, 41]


def test_checks_and_report_import_no_stage_and_no_torch():
    """Statistics are read from artifacts: loading the checks must not load a stage, an adapter,
    a world or torch (a fresh interpreter, so nothing else imported them first)."""
    code = ("import sys, probe.checks, probe.report, probe.checks_grpo, probe.report_grpo\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')\n"
            "      or m.startswith(('probe.stages', 'probe.adapters', 'probe.world', 'probe.rl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.strip()
    assert out == "[]"
    for name in ("checks.py", "report.py", "checks_grpo.py", "report_grpo.py"):
        assert not [m for m in _imports(LIBRARY / name) if m.startswith("probe.stages")], name


def test_no_library_module_imports_the_tests():
    bad = {str(p.relative_to(REPO)): m for p in LIBRARY.rglob("*.py") for m in _imports(p)
           if m.split(".")[0] in ("tests", "conftest")}
    assert not bad


def test_embedded_world_reader_does_not_import_its_build():
    """world.py reads a built directory; build.py builds it and measures it through world.py:
    one direction only."""
    assert "probe.world.embedded.build" not in _imports(LIBRARY / "world/embedded/world.py")


class _Embedded:
    """The built-in embedded world's identity (out/world/07db5a55b748)."""

    def identity(self) -> dict:
        return {"name": "embedded", "model_id": "embedded-qwen3-07db5a55b748",
                "world_hash": "07db5a55b748"}


@pytest.mark.parametrize("source", [None, "configs/embedded.toml"])
def test_auto_batch_sizes_keep_the_default_run_keys(source) -> None:
    """Issue #13 made every batch knob "auto": the default embedded run keeps the keys it had
    with the fixed 64 / 16 / 32 (the directories its cached artifacts live in), because "auto"
    keys as its cap, which is what it resolves to where memory does not bind."""
    from probe.config import load_config
    from probe.layout import grpo_paths, r6_paths
    from probe.stages.phase1 import stage_keys

    cfg = load_config(REPO / source if source else None)
    assert cfg.replay.micro_batch == cfg.grpo.gen_batch_size == cfg.vhack.batch_size == "auto"
    ident = _Embedded().identity()
    keys = stage_keys(_Embedded(), cfg)  # type: ignore[arg-type]
    grpo = grpo_paths(ident, keys["v_hack"], cfg.grpo, "o", cfg.grader)
    assert run_paths(_Embedded(), cfg, "o").root.name == "bf49eeda9274"  # type: ignore[arg-type]
    assert keys == {"teacher_pool": "12ef89fbd5a9", "v_hack": "cf6110ae13dd"}
    assert (grpo.root.name, grpo.teacher_root.name) == ("1e24395a4e40", "bf22d473b340")
    assert r6_paths(ident, keys["v_hack"], cfg, "o").root.name == "0788c38c5299"


def test_auto_keys_as_its_cap_and_another_number_does_not() -> None:
    from probe.config import load_config
    from probe.layout import grpo_paths

    auto = load_config()
    pinned = load_config(overrides={"pool.gen_batch_size": 64, "vhack.batch_size": 16,
                                    "replay.micro_batch": 32, "student_eval.gen_batch_size": 64,
                                    "grpo.micro_batch": 32, "grpo.gen_batch_size": 64})
    w = _Embedded()
    assert run_paths(w, auto).root == run_paths(w, pinned).root  # type: ignore[arg-type]
    assert grpo_paths(w.identity(), "k", auto.grpo) == grpo_paths(w.identity(), "k", pinned.grpo)
    for key in ("pool.gen_batch_size", "replay.micro_batch"):
        other = load_config(overrides={key: 8})
        assert run_paths(w, other).root != run_paths(w, auto).root  # type: ignore[arg-type]
    smaller = load_config(overrides={"grpo.gen_batch_size": 8}).grpo
    assert grpo_paths(w.identity(), "k", smaller).teacher_root != \
        grpo_paths(w.identity(), "k", auto.grpo).teacher_root
