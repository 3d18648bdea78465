import pytest
import yaml

from aesthetic_audit.config import AuditConfig, example_yaml, load_config, parse_set
from aesthetic_audit.errors import ConfigError


def test_unknown_keys_are_errors_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts:\n  nn: 3\nscorez: [a]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "unknown key 'prompts.nn'" in msg and "unknown key 'scorez'" in msg and str(path) in msg


def test_file_then_overrides_then_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nprompts:\n  n: 10\n  k_max: 3\n")
    cfg = load_config(path, {"prompts.n": 20})
    assert (cfg.seed, cfg.prompts.n, cfg.prompts.k_max, cfg.prompts.k_min) == (3, 20, 3, 2)
    assert load_config(path, {"prompts.n": None}).prompts.n is None  # --set prompts.n=null: all captions
    with pytest.raises(ConfigError, match="k_min .4. is greater than k_max .3."):
        load_config(path, {"prompts.k_min": 4})


def test_base_config_is_kept_under_the_file(tmp_path):
    base = AuditConfig(seed=9).model_dump(mode="json")
    cfg = load_config(None, {"prompts.n": 5}, base=base)
    assert cfg.seed == 9 and cfg.prompts.n == 5


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_editor_section_is_validated():
    with pytest.raises(ConfigError, match="images.editor: k_min .3. is greater than k_max .2."):
        load_config(None, {"images.editor.k_min": 3, "images.editor.k_max": 2})
    with pytest.raises(ConfigError, match=r"images.editor.strengths.1: Input should be less than or equal to 1"):
        load_config(None, {"images.editor.strengths": [0.5, 1.5]})
    with pytest.raises(ConfigError, match="images.editor.strengths: List should have at least 1 item"):
        load_config(None, {"images.editor.strengths": []})


def test_parse_set():
    assert parse_set(["prompts.n=50", "prompts.dimensions=[clarity, emotion]", "seed=1"]) == {
        "prompts.n": 50, "prompts.dimensions": ["clarity", "emotion"], "seed": 1}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["prompts.n"])


def test_example_config_loads_back_to_defaults_and_documents_keys(tmp_path):
    text = example_yaml()
    assert "# sample this many captions" in text and "max_words: 70" in text
    path = tmp_path / "example.yaml"
    path.write_text(text)
    assert load_config(path) == AuditConfig()
    assert yaml.safe_load(text)["prompts"]["llm"]["temperature"] == 0.1


def test_config_hash_changes_with_any_value():
    assert AuditConfig().hash() == AuditConfig().hash()
    assert AuditConfig(seed=1).hash() != AuditConfig().hash()


def test_cli_init_writes_and_refuses_to_overwrite(tmp_path, cli):
    path = tmp_path / "a.yaml"
    assert cli("init", path)[0] == 0
    assert load_config(path) == AuditConfig()
    code, _, err = cli("init", path)
    assert code == 2 and "--force" in err
