import copy
from pathlib import Path

import pytest
import yaml

from quantflow.config import ConfigError, canonical_quant, load_and_validate, normalise_quants

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def validate(cfg):
    return load_and_validate(cfg, SCHEMA, REPO)


def broken(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("path", ["config.yaml", "tests/configs/tiny.yaml"])
def test_shipped_configs_validate_and_get_defaults(path):
    cfg = validate(yaml.safe_load((REPO / path).read_text()))
    assert cfg["report"]["quality_floor_kl"] > 0
    assert cfg["bench"]["target_ci"] == 0.03


def test_unknown_quant_type_names_key_and_lists_valid_types():
    msg = broken(lambda c: c["quants"].__setitem__(1, "Q6_X"))
    assert msg.startswith("config key quants[1]: unknown quantization type 'Q6_X'")
    assert "Q4_K_M" in msg


def test_missing_key():
    msg = broken(lambda c: c.pop("quants"))
    assert "'quants' is required but missing" in msg


def test_wrong_type():
    msg = broken(lambda c: c["bench"].__setitem__("gen_tokens", "many"))
    assert msg.startswith("config key bench.gen_tokens: 'many' is not of type 'integer'")


def test_unknown_key():
    msg = broken(lambda c: c["finetunes"][0].__setitem__("lr", 1e-3))
    assert msg.startswith("config key finetunes[0]: unknown key(s) lr")


def test_dimension_not_multiple_of_256():
    msg = broken(lambda c: c["demo"]["model"].__setitem__("hidden_size", 320))
    assert "demo.model.hidden_size" in msg and "256" in msg


def test_local_model_without_directory():
    msg = broken(
        lambda c: c["models"].append({"name": "x", "source": "local", "path": "no/such/dir", "data": DEFAULT_DATA})
    )
    assert "models[1].path" in msg


DEFAULT_DATA = {k: "config.yaml" for k in ("sft_train", "sft_eval", "test", "heldout", "prompts")}


def test_hub_id_offline_says_how_to_use_a_local_copy():
    msg = broken(
        lambda c: c["models"].append({"name": "t", "source": "hub", "hf": "nobody/not-a-model", "data": DEFAULT_DATA})
    )
    assert "models[1].hf" in msg and "source: local" in msg


def test_aliases_resolve_to_one_name():
    assert canonical_quant("q4_k") == "Q4_K_M"
    assert list(normalise_quants(["Q3_K", "Q5_K", {"type": "Q4_K", "output_tensor_type": "Q8_0"}])) == [
        "Q3_K_M",
        "Q5_K_M",
        "Q4_K_M",
    ]
    with pytest.raises(ConfigError, match="listed twice"):
        normalise_quants(["Q4_K", "Q4_K_M"])


def test_bad_tensor_override():
    with pytest.raises(ConfigError, match=r"quants\[0\].output_tensor_type"):
        normalise_quants([{"type": "Q4_K_M", "output_tensor_type": "Q9_9"}])


def test_hub_dataset_offline_says_how_to_use_a_local_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    local = {k: "config.yaml" for k in ("sft_eval", "test", "heldout", "prompts")}
    msg = broken(
        lambda c: c["models"].append(
            {
                "name": "t",
                "source": "local",
                "path": str(tmp_path),
                "data": {**local, "sft_train": "hub:nobody/no-such-set"},
            }
        )
    )
    assert "hub dataset 'nobody/no-such-set'" in msg and "give its path instead" in msg


def test_hub_dataset_only_for_training_splits(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    local = {k: "config.yaml" for k in ("sft_train", "sft_eval", "heldout", "prompts")}
    msg = broken(
        lambda c: c["models"].append(
            {"name": "t", "source": "local", "path": str(tmp_path), "data": {**local, "test": "hub:nobody/x"}}
        )
    )
    assert "sft_train / sft_eval only" in msg
