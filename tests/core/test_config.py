import pytest

from workbench.core.config import ConfigError, RunConfig, parse_block_spec


def full_config() -> RunConfig:
    return RunConfig.from_dict({
        "model": {"source": "org/model", "revision": "abc123", "dtype": "bfloat16", "trust_remote_code": True},
        "lora": {"r": 8, "alpha": 16.0, "dropout": 0.1, "use_rslora": True, "use_dora": True, "init": "gaussian",
                 "bias": "lora_only", "target_modules": ["model.layers.0.self_attn.q_proj"],
                 "rank_pattern": {"model.layers.0.self_attn.q_proj": 4}, "alpha_pattern": {"q_proj": 2.5},
                 "blocks": "0-3", "include": ["re:.*mlp.*"], "modules_to_save": ["lm_head"]},
        "data": {"train_files": ["a.jsonl", "b.jsonl"], "validation_files": ["v.jsonl"], "format": "chat",
                 "columns": {"messages": "conv"}, "max_length": 512, "packing": False, "validation_split": 0.1,
                 "train_on": "all", "chat_template": "{{ x }}", "skip_bad_rows": True},
        "training": {"epochs": 2.5, "max_steps": 100, "learning_rate": 1e-4, "batch_size": 2, "gradient_accumulation": 8,
                     "scheduler": "linear", "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": 7, "precision": "bf16",
                     "gradient_checkpointing": True, "logging_steps": 5, "eval_steps": 50, "save_steps": 25,
                     "save_total_limit": 0, "sample_steps": 10, "sample_prompts": ["Hi", "Über"]},
        "output": {"runs_root": "/tmp/r", "name": "exp-1"},
    })


def test_toml_round_trip_is_lossless():
    cfg = full_config()
    text = cfg.to_toml()
    again = RunConfig.from_toml_text(text)
    assert again == cfg
    assert again.to_toml() == text
    # defaults round-trip too, including fields whose default is None (left out of the file)
    assert RunConfig.from_toml_text(RunConfig().to_toml()) == RunConfig()


def test_save_and_load(tmp_path):
    cfg = full_config()
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.from_toml(tmp_path / "run.toml") == cfg
    assert not [p for p in tmp_path.iterdir() if p.name != "run.toml"], "temporary files left behind"


@pytest.mark.parametrize("data, field, words", [
    ({"lora": {"r": 0}}, "lora.r", "at least 1"),
    ({"lora": {"r": -3}}, "lora.r", "at least 1"),
    ({"lora": {"r": "8"}}, "lora.r", "integer"),
    ({"lora": {"dropout": 1.5}}, "lora.dropout", "less than 1"),
    ({"lora": {"preset": "everything"}}, "lora.preset", "attention-qv"),
    ({"lora": {"blocks": "9-2"}}, "lora.blocks", "ends before it starts"),
    ({"lora": {"rank_pattern": {"q_proj": 0}}}, "lora.rank_pattern", "at least 1"),
    ({"training": {"precision": "fp8"}}, "training.precision", "'bf16'"),
    ({"training": {"learning_rate": 0}}, "training.learning_rate", "greater than 0"),
    ({"training": {"batch_size": 0}}, "training.batch_size", "greater than or equal to 1"),
    ({"data": {"format": "xml"}}, "data.format", "alpaca"),
    ({"data": {"max_length": 2}}, "data.max_length", "8"),
    ({"output": {"name": "a/b"}}, "output.name", "slashes"),
])
def test_bad_values_name_field_value_and_allowed(data, field, words):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(data)
    msg = str(exc.value)
    line = next(line for line in msg.splitlines() if field in line)
    assert words in line
    value = data[field.split(".")[0]][field.split(".")[1]]
    assert repr(value) in line


@pytest.mark.parametrize("data, words", [
    ({"lora": {"rankk": 8}}, "lora.rankk: unknown key in [lora]; allowed: r, alpha"),
    ({"trainer": {}}, "trainer: unknown key; allowed: model, lora, data, training, eval, output"),
])
def test_unknown_keys_are_errors(data, words):
    with pytest.raises(ConfigError, match="unknown key") as exc:
        RunConfig.from_dict(data)
    assert words in str(exc.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml_text("[lora\nr=1")
    with pytest.raises(ConfigError, match="file not found"):
        RunConfig.from_toml(tmp_path / "nope.toml")


def test_overrides_parse_values_and_validate():
    cfg = RunConfig().with_overrides(["training.learning_rate=1e-4", "model.source=./m", "lora.r=4",
                                      "data.train_files=['x.jsonl']", "training.gradient_checkpointing=true"])
    assert cfg.training.learning_rate == 1e-4 and cfg.model.source == "./m" and cfg.lora.r == 4
    assert cfg.data.train_files == ["x.jsonl"] and cfg.training.gradient_checkpointing is True
    with pytest.raises(ConfigError, match="lora.r"):
        RunConfig().with_overrides(["lora.r=0"])
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig().with_overrides(["lora.rank=4"])
    with pytest.raises(ConfigError, match="section.field=value"):
        RunConfig().with_overrides(["lr"])


def test_assignment_is_validated():
    cfg = RunConfig()
    with pytest.raises(Exception, match="at least 1"):
        cfg.lora.r = 0


def test_block_spec():
    assert parse_block_spec("8-11") == [8, 9, 10, 11]
    assert parse_block_spec("0, 2,4-5") == [0, 2, 4, 5]
    for bad in ("x", "3-", "", "5-1"):
        with pytest.raises(ValueError):
            parse_block_spec(bad)


def test_eval_steps_without_validation_data_is_a_warning_not_silence():
    lonely = RunConfig.from_dict({"training": {"eval_steps": 5}, "data": {"train_files": ["t.jsonl"]}})
    assert lonely.warnings() == ["training.eval_steps = 5 is set, but there is no validation data, so nothing is "
                                 "evaluated: add data.validation_files or set data.validation_split (e.g. 0.1)."]
    for data in ({"validation_files": ["v.jsonl"]}, {"validation_split": 0.1}):
        assert RunConfig.from_dict({"training": {"eval_steps": 5}, "data": {"train_files": ["t.jsonl"], **data}}).warnings() == []
    assert RunConfig.from_dict({"data": {"train_files": ["t.jsonl"]}}).warnings() == []
