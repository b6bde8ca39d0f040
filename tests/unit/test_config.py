"""The experiment config: one dataclass tree, TOML file < dotted flags, errors naming key and file,
the shipped configs, the CLI and the pytest options (however spelled)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from probe.config import (RULES, ConfigError, ExperimentConfig, leaf_keys, load_config,
                          parse_assignments, parse_value, read_toml)
from probe.layout import run_paths
from probe.stages.phase1 import Phase1Config
from probe.world.real import RealWorldConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def _write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the tree -------------------------------------------------------------------------------------

def test_defaults_are_todays_defaults_and_keep_the_run_directory() -> None:
    """No statistic changes: the tree's defaults are the stages' defaults, and the run directory
    (hash of world + Phase 1 sections) is the one a plain Phase1Config gave."""
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert all(getattr(cfg, f.name) == getattr(Phase1Config(), f.name) for f in fields(Phase1Config))

    class _W:
        def identity(self) -> dict:
            return {"name": "w", "model_id": "m", "world_hash": "h"}

    assert run_paths(_W(), cfg).root == run_paths(_W(), Phase1Config()).root  # type: ignore[arg-type]
    other = load_config(overrides={"arms": ["vanilla"]})  # which arms run is not an artifact input
    assert run_paths(_W(), other).root == run_paths(_W(), cfg).root  # type: ignore[arg-type]
    assert run_paths(_W(), load_config(overrides={"pool.steps": 3})).root != \
        run_paths(_W(), cfg).root  # type: ignore[arg-type]


def test_every_section_is_frozen_and_every_rule_names_a_real_key() -> None:
    def walk(cls: type) -> None:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        for hint in typing.get_type_hints(cls).values():
            if is_dataclass(hint):
                walk(hint)
    walk(ExperimentConfig)
    walk(RealWorldConfig)
    keys = {k for k, _, _ in leaf_keys()} | {k for k, _, _ in leaf_keys(RealWorldConfig, "world.")}
    assert set(RULES) <= keys, sorted(set(RULES) - keys)  # a renamed field must not drop its rule


# -- the file and the overrides ---------------------------------------------------------------------

def test_file_values_and_dotted_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, '[pool]\nsteps = 5\ngroup_size = 4\n[replay]\nlr = 1\n'
                            '[grader]\nhide_paths = ["/data"]\n')
    cfg = load_config(path, {"pool.steps": 3, "replay.micro_batch": 8})
    assert (cfg.pool.steps, cfg.pool.group_size, cfg.replay.micro_batch) == (3, 4, 8)
    assert cfg.replay.lr == 1.0 and isinstance(cfg.replay.lr, float)  # TOML int in a float field
    assert cfg.grader.hide_paths == ("/data",)
    assert cfg.vhack == ExperimentConfig().vhack  # untouched sections keep their defaults


@pytest.mark.parametrize("text, override, match", [
    ("[pool]\nstepz = 3\n", {}, r"exp.toml: pool.stepz: unknown key; expected one of \[.*'steps'"),
    ("[poool]\nsteps = 3\n", {}, r"exp.toml: poool: unknown key; expected one of \[.*'pool'"),
    ("[pool]\nsteps = \"3\"\n", {}, r"exp.toml: pool.steps: expected int, got '3' \(str\)"),
    ("[pool]\nsteps = 0\n", {}, r"exp.toml: pool.steps: 0 must be > 0"),
    ("[pool]\nsteps = true\n", {}, r"exp.toml: pool.steps: expected int, got a boolean"),
    ("[pool]\ntop_p = 1.5\n", {}, r"exp.toml: pool.top_p: 1.5 must be in \(0, 1\]"),
    ("[replay]\nprojection = \"two_sided\"\n", {}, r"replay.projection: 'two_sided' is not one of"),
    ("arms = [\"vanilla\", \"projected_typo\"]\n", {}, r"arms: 'projected_typo' is not one of"),
    ("[grader]\nhide_paths = \"/data\"\n", {}, r"grader.hide_paths: expected tuple"),
    ("[pool]\nsteps = 3\n", {"replay.lr": "fast"},
     r"the command line \(--replay.lr\): replay.lr: expected float, got 'fast'"),
    ("", {"pool.nope": 1}, r"the command line \(--pool.nope\): pool.nope: unknown key"),
    ("[world]\nbase = \"b\"\nteacher_adapter = \"t\"\n", {},
     r"exp.toml: world.problems: missing required key"),
    ("[world]\nbase = \"b\"\nteacher_adapter = \"t\"\nproblems = \"p\"\nlr = 1\n", {},
     r"exp.toml: world.lr: unknown key; expected one of \[.*'teacher_adapter'"),
    ("[world]\nbase = \"b\"\nteacher_adapter = \"t\"\nproblems = \"p\"\nmax_new_tokens = -1\n", {},
     r"exp.toml: world.max_new_tokens: -1 must be > 0"),
])
def test_bad_key_type_or_value_names_key_and_source(tmp_path: Path, text: str, override: dict,
                                                    match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), override)


BATCH_KNOBS = ("pool.gen_batch_size", "vhack.batch_size", "replay.micro_batch",
               "student_eval.gen_batch_size", "grpo.micro_batch", "grpo.gen_batch_size")


@pytest.mark.parametrize("key", BATCH_KNOBS)
def test_batch_sizes_are_auto_or_a_positive_int(tmp_path: Path, key: str) -> None:
    """Issue #13: every batch knob defaults to "auto" (sized from free memory), takes a positive
    int, and names itself for anything else, in a file or on the command line."""
    section, leaf = key.split(".")
    assert _get(load_config(), key) == "auto"
    assert _get(load_config(_write(tmp_path, f"[{section}]\n{leaf} = 8\n")), key) == 8
    assert _get(load_config(_write(tmp_path, f'[{section}]\n{leaf} = "auto"\n')), key) == "auto"
    for bad, why in (("0", "0 must be a positive integer or 'auto'"),
                     ("-1", "-1 must be a positive integer or 'auto'"),
                     ('"big"', "'big' must be a positive integer or 'auto'"),
                     ('"8"', "'8' must be a positive integer or 'auto'"),
                     ("true", "expected int | str, got a boolean"),
                     ("2.5", r"expected int \| str, got 2.5")):
        with pytest.raises(ConfigError, match=rf"exp.toml: {key}: {why}"):
            load_config(_write(tmp_path, f"[{section}]\n{leaf} = {bad}\n"))
    with pytest.raises(ConfigError, match=rf"the command line \(--{key}\): {key}: 'big'"):
        load_config(overrides={key: parse_value("big")})


def test_batch_size_flags_take_auto_or_a_number(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    import probe.cli as cli

    seen = {}

    def fake_setup(a):  # stop before any world is built: the resolved config is the point
        seen["cfg"] = cli._config(a)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_run", fake_setup)
    for flag, want in (("8", 8), ("auto", "auto")):
        with pytest.raises(SystemExit):
            cli.main(["run", "--replay.micro_batch", flag, "--grpo.gen_batch_size", flag])
        assert (seen["cfg"].replay.micro_batch, seen["cfg"].grpo.gen_batch_size) == (want, want)
    assert cli.main(["run", "--replay.micro_batch", "0"]) == 2  # a usage error naming the key
    assert "replay.micro_batch: 0 must be a positive integer or 'auto'" in capsys.readouterr().err


def _get(cfg: ExperimentConfig, key: str):
    section, leaf = key.split(".")
    return getattr(getattr(cfg, section), leaf)


def test_bad_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exp.toml: not valid TOML"):
        load_config(_write(tmp_path, "[pool\nsteps = 3\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_world_table_and_world_path_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg = load_config(_write(tmp_path / "sub", '[world]\nbase = "./base"\n'
                             'teacher_adapter = "org/adapter"\nproblems = "data/p.jsonl"\n'))
    assert isinstance(cfg.world, RealWorldConfig)
    assert cfg.world.base == str((tmp_path / "sub" / "base").resolve())
    assert cfg.world.problems == str((tmp_path / "sub" / "data" / "p.jsonl").resolve())
    assert cfg.world.teacher_adapter == "org/adapter"  # a hub id stays a hub id
    cfg = load_config(_write(tmp_path / "sub", 'world = "real.json"\n'))
    assert cfg.world == str((tmp_path / "sub" / "real.json").resolve())
    # on the command line a path is relative to the working directory, and replaces the table
    assert load_config(_write(tmp_path, '[world]\nbase = "b"\nteacher_adapter = "t"\n'
                              'problems = "/p"\n'), {"world": "embedded"}).world == "embedded"


def test_flag_values_parse_as_toml() -> None:
    assert parse_value("3") == 3 and parse_value("0.01") == 0.01 and parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"] and parse_value("none") is None
    assert parse_value("simple_overwrite_tests") == "simple_overwrite_tests"
    assert parse_value("real.json") == "real.json"
    assert parse_assignments(["pool.steps=3", "replay.lr = 0.01"]) == {"pool.steps": 3,
                                                                       "replay.lr": 0.01}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["pool.steps"])
    assert load_config(overrides={"replay.max_grad_norm": None}).replay.max_grad_norm is None


# -- the shipped configs -------------------------------------------------------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_embedded_toml_is_every_default_explicitly() -> None:
    path = CONFIGS / "embedded.toml"
    assert load_config(path) == ExperimentConfig()
    settable = {k for k, _, d in leaf_keys() if d is not None}  # TOML has no null: those omitted
    assert set(_flat(read_toml(path))) == settable


def test_qwen3_4b_toml_has_the_real_model_numbers() -> None:
    cfg = load_config(CONFIGS / "qwen3-4b.toml")
    assert isinstance(cfg.world, RealWorldConfig) and cfg.world.max_new_tokens == 1536
    p = cfg.pool
    assert (p.steps, p.problems_per_step, p.group_size, p.max_new_tokens) == (20, 20, 8, 1536)
    assert (p.temperature, p.top_p) == (0.7, 0.95)
    assert cfg.replay.micro_batch == 8


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_bad_key_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture
                                               ) -> None:
    from probe.cli import main

    path = _write(tmp_path, "[replay]\nlrr = 0.1\n")
    assert main(["--out", str(tmp_path / "out"), "pool", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "exp.toml: replay.lrr: unknown key" in err
    with pytest.raises(SystemExit):  # argparse: a flag the tree does not have
        main(["pool", "--pool.stepz", "3"])


def test_cli_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import probe.cli as cli

    seen = {}

    def fake_setup(a):  # stop before any world is built: the resolved config is the point
        seen["cfg"] = cli._config(a)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_run", fake_setup)
    path = _write(tmp_path, "[pool]\nsteps = 5\ngroup_size = 4\n")
    with pytest.raises(SystemExit):
        cli.main(["run", "--config", str(path), "--pool.steps", "3", "--replay.lr", "0.01",
                  "--arms", "vanilla", "projected", "--grader.hide_paths", "/a", "/b"])
    cfg = seen["cfg"]
    assert (cfg.pool.steps, cfg.pool.group_size, cfg.replay.lr) == (3, 4, 0.01)
    assert cfg.arms == ("vanilla", "projected") and cfg.grader.hide_paths == ("/a", "/b")
    with pytest.raises(SystemExit):
        cli.main(["run", "--steps", "2"])  # the old spelling still works
    assert seen["cfg"].pool.steps == 2


# -- the pytest options --------------------------------------------------------------------------

def test_plugin_is_the_entry_point_under_its_module_name() -> None:
    """The conftest's `pytest_plugins` fallback and the entry point must share one name, or an
    installed checkout registers the options twice (pytest: 'option names already added')."""
    eps = read_toml(ROOT / "pyproject.toml")["project"]["entry-points"]["pytest11"]
    assert eps == {"probe.pytest_plugin": "probe.pytest_plugin"}
    conftest = (ROOT / "conftest.py").read_text()
    assert 'pytest_plugins = ["probe.pytest_plugin"]' in conftest
    assert "def pytest_addoption" not in conftest


def _pytest(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_ADDOPTS": ""}
    env.pop("PYTEST_XDIST_WORKER", None)
    # `-p probe.pytest_plugin` loads the plugin as early as the installed entry point does
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "probe.pytest_plugin",
                           "-p", "no:xdist", "-p", "no:randomly", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_world_option_with_a_space_and_an_absolute_path(tmp_path: Path) -> None:
    """`pytest -m unit --world /abs/real.json`: the path sits under another project (its own
    pyproject.toml), so an option pytest does not know yet makes it the rootdir."""
    other = tmp_path / "data"
    other.mkdir()
    (other / "pyproject.toml").write_text("")
    world = other / "real.json"
    world.write_text("{}")
    cfg = _write(tmp_path, "[pool]\nsteps = 3\n")
    res = _pytest(["-m", "unit", "-k", "test_flag_values_parse_as_toml", "--co", "-q",
                   "--world", str(world), "--config", str(cfg), "--set", "replay.lr=0.01"], ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "test_config.py::test_flag_values_parse_as_toml" in res.stdout
    assert f"rootdir: {ROOT}" in res.stdout or "1/" in res.stdout


def test_bad_config_stops_pytest_at_start_naming_the_key(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "[pool]\nsteps = 0\n")
    res = _pytest(["-m", "unit", "--co", "-q", "--config", str(cfg),
                   str(ROOT / "tests" / "unit" / "test_config.py")], tmp_path)
    assert res.returncode == 4, res.stdout[-2000:] + res.stderr[-2000:]  # usage error
    assert "exp.toml: pool.steps: 0 must be > 0" in res.stderr


def test_experiment_config_reads_the_options(pytestconfig: pytest.Config) -> None:
    """In this session (no --config): the built-in defaults, or the --world given."""
    from probe.pytest_plugin import experiment_config

    cfg = experiment_config(pytestconfig)
    assert cfg.pool == ExperimentConfig().pool
    assert cfg.world == (pytestconfig.getoption("--world") or "embedded")
    json.dumps(cfg.arms)  # serialisable into manifests


def test_qwen3_4b_toml_has_the_real_grpo_numbers() -> None:
    g = load_config(CONFIGS / "qwen3-4b.toml").grpo
    assert (g.problems_per_step, g.group_size, g.max_new_tokens, g.steps) == (16, 16, 1536, 20)
    assert (g.temperature, g.top_p, g.split) == (0.7, 0.95, "train")
    assert len(g.seeds) >= 3 and "vanilla" in g.arms


@pytest.mark.parametrize("text, key", [('correction = "bogus"', "grpo.correction"),
                                       ("teacher_frac = 1.5", "grpo.teacher_frac"),
                                       ('arms = ["projected"]', "grpo.arms"),
                                       ('arms = ["vanilla", "nope"]', "grpo.arms"),
                                       ("seeds = []", "grpo.seeds")])
def test_bad_grpo_values_name_key_and_file(tmp_path, text, key) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(f"[grpo]\n{text}\n")
    with pytest.raises(ConfigError, match=rf"{path}: {key}"):
        load_config(path)
