"""RealWorld on a tiny stand-in (tmp dirs for base / adapter / problems): the World contract holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.unit.world_contract import check_world_contract

from probe.env.problems import ProblemFormatError, write_problems
from tests.tiny_models import save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3
from probe.world.real import RealWorld, RealWorldConfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> RealWorldConfig:
    root = tmp_path_factory.mktemp("realworld")
    base = save_tiny_base(root / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), root / "teacher", r=4, seed=2)
    problems = tiny_problems()
    write_problems(problems, root / "train.jsonl")
    write_problems(problems[1:], root / "eval.jsonl")
    return RealWorldConfig(base=str(base), teacher_adapter=str(lora),
                           problems=str(root / "train.jsonl"),
                           eval_problems=str(root / "eval.jsonl"), max_new_tokens=64)


def test_real_world_satisfies_the_contract(config: RealWorldConfig) -> None:
    world = RealWorld(config)
    summary = check_world_contract(world)
    assert summary["n_train"] == 2 and summary["n_eval"] == 1
    assert summary["pairs"] >= 2  # every hack style on each problem, from probe.pairs
    assert world.sampling.max_new_tokens == 64
    assert world.model_id.endswith("tiny-qwen3")
    assert world.meta["merge_report"]["adapted_modules"] == 14


def test_render_is_the_chat_template_with_thinking_off(config: RealWorldConfig) -> None:
    world = RealWorld(config)
    text = world.render(world.problems("train")[0], "simple_overwrite_tests")
    assert "run_tests()" in text and text.endswith("<think>\n\n</think>\n\n")
    assert text.startswith("<|im_start|>system\n")


def test_eval_split_defaults_to_train_file_and_unknown_split_fails(config: RealWorldConfig) -> None:
    cfg = RealWorldConfig(base=config.base, teacher_adapter=config.teacher_adapter,
                          problems=config.problems)
    world = RealWorld(cfg)
    assert world.problems("eval") == world.problems("train") == tiny_problems()
    with pytest.raises(ValueError, match="hard"):
        world.problems("hard")


def test_teacher_differs_from_base(config: RealWorldConfig) -> None:
    world = RealWorld(config)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        lb = world.load_base().forward(input_ids=ids).logits
        lt = world.load_teacher().forward(input_ids=ids).logits
    assert (lb - lt).abs().max() > 1e-2


def test_contract_catches_a_teacher_that_is_the_base(config: RealWorldConfig) -> None:
    class Broken(RealWorld):
        def load_teacher(self, device="cpu", dtype=None):
            return self.load_base(device, dtype)

    with pytest.raises(AssertionError, match="no adapter"):
        check_world_contract(Broken(config))


def test_contract_catches_a_render_that_drops_the_hint(config: RealWorldConfig) -> None:
    class Hintless(RealWorld):
        def render(self, problem, hint):
            return super().render(problem, None)

    with pytest.raises(AssertionError, match="hint phrase"):
        check_world_contract(Hintless(config), check_models=False)


def test_config_from_json_resolves_relative_paths(config: RealWorldConfig, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_problems(tiny_problems(), tmp_path / "data" / "p.jsonl")
    cfg_path = tmp_path / "world.json"
    cfg_path.write_text(json.dumps({"base": config.base, "teacher_adapter": config.teacher_adapter,
                                    "problems": "data/p.jsonl", "max_new_tokens": 32}))
    cfg = RealWorldConfig.from_json(cfg_path)
    assert Path(cfg.problems) == (tmp_path / "data" / "p.jsonl").resolve()
    assert cfg.eval_problems is None and cfg.hint == "simple_overwrite_tests"
    world = RealWorld.from_json(cfg_path)
    assert len(world.problems("train")) == 2 and world.sampling.max_new_tokens == 32


def test_config_from_json_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base": "x", "teacher_adapter": "y", "problems": "p", "lr": 1}))
    with pytest.raises(ValueError, match="bad.json: lr: unknown key"):
        RealWorldConfig.from_json(bad)
    bad.write_text(json.dumps({"base": "x"}))
    with pytest.raises(ValueError, match="teacher_adapter"):
        RealWorldConfig.from_json(bad)
    with pytest.raises(FileNotFoundError):
        RealWorldConfig.from_json(tmp_path / "absent.json")


def test_bad_problem_file_is_reported(config: RealWorldConfig, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    world = RealWorld(RealWorldConfig(base=config.base, teacher_adapter=config.teacher_adapter,
                                      problems=str(tmp_path / "bad.jsonl")))
    with pytest.raises(ProblemFormatError, match="bad.jsonl:1"):
        world.problems("train")


def test_get_world_selects_a_real_world_from_json(config: RealWorldConfig, tmp_path: Path) -> None:
    """`--world real.json` in pytest and the CLI goes through get_world."""
    from dataclasses import asdict

    from probe.world.select import get_world

    path = tmp_path / "real.json"
    path.write_text(json.dumps({k: v for k, v in asdict(config).items() if v is not None}))
    world = get_world(str(path))
    assert isinstance(world, RealWorld) and world.problems("eval") == RealWorld(config).problems("eval")
    with pytest.raises(ValueError, match="unknown world"):
        get_world(str(tmp_path / "missing.json"))


# -- every input of a real world keys its artifacts (issue 12 item 1) -----------------------------

def _keys(cfg: RealWorldConfig) -> tuple[str, dict[str, str]]:
    from probe.stages.phase1 import Phase1Config, run_paths, stage_keys

    world = RealWorld(cfg)  # a fresh world: identity is computed once per world object
    return run_paths(world, Phase1Config()).root.name, stage_keys(world, Phase1Config())


def test_every_input_changes_the_run_directory_and_stage_keys(tmp_path: Path) -> None:
    """Swap each input in place (same path, new content) or change a setting: a new run directory
    and new teacher-pool and v_hack keys, never the stale artifacts of the old one."""
    from dataclasses import replace

    base = save_tiny_base(tmp_path / "tiny-qwen3", seed=0)
    lora = save_random_lora(tiny_qwen3(seed=0), tmp_path / "teacher", r=4, seed=2)
    problems = tiny_problems()
    write_problems(problems, tmp_path / "train.jsonl")
    write_problems(problems[1:], tmp_path / "eval.jsonl")
    cfg = RealWorldConfig(base=str(base), teacher_adapter=str(lora),
                          problems=str(tmp_path / "train.jsonl"),
                          eval_problems=str(tmp_path / "eval.jsonl"), max_new_tokens=64)
    seen = {_keys(cfg)[0]}

    def changed(what: str) -> None:
        root, keys = _keys(cfg)
        assert root not in seen, f"{what}: run directory unchanged"
        assert all(k not in seen for k in keys.values()), f"{what}: a stage key unchanged"
        seen.add(root)
        seen.update(keys.values())

    seen.update(_keys(cfg)[1].values())
    save_random_lora(tiny_qwen3(seed=0), lora, r=4, seed=3)  # another adapter, same folder
    changed("teacher_adapter")
    write_problems(problems[::-1], tmp_path / "train.jsonl")
    changed("problems")
    write_problems(problems[:1], tmp_path / "eval.jsonl")
    changed("eval_problems")
    cfg = replace(cfg, max_new_tokens=32)
    changed("max_new_tokens")
    save_tiny_base(base, seed=1)  # other base weights, same folder
    changed("base")
    cfg = replace(cfg, hint="overwrite_tests")
    changed("hint")
    # content, not path: the same files elsewhere are the same world (a copied cache stays valid)
    import shutil

    shutil.copytree(tmp_path / "teacher", tmp_path / "teacher-copy")
    assert _keys(replace(cfg, teacher_adapter=str(tmp_path / "teacher-copy"))) == _keys(cfg)


def test_missing_paths_fail_at_load_naming_the_key(config: RealWorldConfig, tmp_path: Path) -> None:
    """`probe world` must not report success for a world whose teacher folder is missing."""
    from dataclasses import asdict, replace

    from probe.models import ModelNotFoundError
    from probe.world.select import get_world

    cases = {"teacher_adapter": str(tmp_path / "no-teacher"), "base": str(tmp_path / "no-base"),
             "tokenizer": str(tmp_path / "no-tok"), "problems": str(tmp_path / "no.jsonl"),
             "eval_problems": str(tmp_path / "no-eval.jsonl")}
    for key, missing in cases.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**{k: v for k, v in asdict(config).items() if v is not None},
                                    key: missing}))
        with pytest.raises(FileNotFoundError, match=rf"{key}.json: {key}: .*{Path(missing).name}"):
            get_world(str(path))
        with pytest.raises(FileNotFoundError, match=rf"exp.toml \[world\]: {key}: "):
            get_world(replace(config, **{key: missing}), source="exp.toml")
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    with pytest.raises(ModelNotFoundError, match="teacher_adapter: .*lacks"):
        RealWorld(replace(config, teacher_adapter=str(not_a_model)))


def test_probe_world_fails_on_a_missing_teacher(config: RealWorldConfig, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from dataclasses import asdict

    from probe.cli import main

    path = tmp_path / "real.json"
    path.write_text(json.dumps({**{k: v for k, v in asdict(config).items() if v is not None},
                                "teacher_adapter": str(tmp_path / "gone")}))
    assert main(["--out", str(tmp_path / "out"), "world", "--world", str(path)]) == 2
    assert "teacher_adapter" in capsys.readouterr().err
