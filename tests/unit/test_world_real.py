"""RealWorld on a tiny stand-in (tmp dirs for base / adapter / problems): the World contract holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.unit.world_contract import check_world_contract

from probe.env.problems import ProblemFormatError, write_problems
from probe.tiny import save_random_lora, save_tiny_base, tiny_problems, tiny_qwen3
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
