from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from speechdistill.config import ConfigError, dump_yaml, from_dict, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class Top:
    max_steps: int = 100
    name: str = "x"
    use_bf16: bool = False
    layers: List[int] = field(default_factory=lambda: [4, 8, 12])
    teacher: Optional[str] = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides_merge_with_cli_winning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\noptim:\n  lr: 0.001\nlayers: [1, 2]\n")
    cfg = load_config(Top, path, parse_overrides(["--max-steps", "20", "--optim.lr", "1e-4", "--use_bf16", "true"]))
    assert cfg.max_steps == 20 and cfg.optim.lr == 1e-4 and cfg.use_bf16 is True and cfg.layers == [1, 2]
    assert cfg.optim.betas == [0.9, 0.98]


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_step: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Top, path)
    msg = str(err.value)
    assert "max_step" in msg and str(path) in msg and "did you mean 'max_steps'" in msg


def test_nested_unknown_key_and_type_errors():
    with pytest.raises(ConfigError, match=r"config.optim: unknown key 'lrr'"):
        from_dict(Top, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"config.max_steps: expected an integer"):
        from_dict(Top, {"max_steps": "many"})
    with pytest.raises(ConfigError, match="expected true or false"):
        from_dict(Top, {"use_bf16": "yes please"})


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--max_steps"])


def test_none_override_and_round_trip():
    cfg = load_config(Top, None, parse_overrides(["--teacher", "none"]))
    assert cfg.teacher is None
    again = from_dict(Top, __import__("yaml").safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_command_line_keys_and_values_are_blamed_on_the_option_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\noptim:\n  lr: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config(Top, path, parse_overrides(["--max-stepz", "20"]))
    assert str(err.value).startswith("command line: unknown option '--max_stepz'; did you mean '--max_steps'?")
    assert str(path) not in str(err.value)
    with pytest.raises(ConfigError, match=r"^command line: unknown option '--optim.lrr'; did you mean '--optim.lr'"):
        load_config(Top, path, parse_overrides(["--optim.lrr", "1"]))
    with pytest.raises(ConfigError, match=r"^command line: --max_steps: expected an integer, found 'many'"):
        load_config(Top, path, parse_overrides(["--max_steps", "many"]))
    path.write_text("max_stepz: 5\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'max_stepz'"):
        load_config(Top, path, parse_overrides(["--max_steps", "3"]))


def test_numbers_must_be_finite_and_the_error_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=rf"{path}.optim.lr: must be a finite number, found nan"):
        load_config(Top, path)
    with pytest.raises(ConfigError, match=r"command line: --optim.lr: must be a finite number, found inf"):
        load_config(Top, None, parse_overrides(["--optim.lr", ".inf"]))
