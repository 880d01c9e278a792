import copy
import json
import shutil
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
    raw = yaml.safe_load((REPO / path).read_text())
    cfg = validate(raw)
    assert cfg["report"]["quality_floor_kl"] > 0
    given = raw.get("bench") or {}
    assert cfg["bench"]["target_ci"] == given.get("target_ci", 0.03)
    assert cfg["bench"]["curve_rounds"] == given.get("curve_rounds", 10)


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


def _local_model(hf_dir, data: dict, **extra) -> dict:
    return {"name": "t", "source": "local", "path": str(hf_dir), "data": {k: str(v) for k, v in data.items()}, **extra}


def _data(tiny_data) -> dict:
    return {k: tiny_data[k] for k in ("sft_train", "sft_eval", "test", "heldout", "prompts", "calibration")}


def test_local_model_with_real_files_validates(tiny_hf, tiny_data):
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"].append(_local_model(tiny_hf, _data(tiny_data)))
    validate(cfg)


def test_hub_dataset_offline_says_how_to_use_a_local_file(tiny_hf, tiny_data):
    data = {**_data(tiny_data), "sft_train": "hub:nobody/no-such-set"}
    msg = broken(lambda c: c["models"].append(_local_model(tiny_hf, data)))
    assert "hub dataset 'nobody/no-such-set'" in msg and "give its path instead" in msg


def test_hub_dataset_only_for_training_splits(tiny_hf, tiny_data):
    data = {**_data(tiny_data), "test": "hub:nobody/x"}
    msg = broken(lambda c: c["models"].append(_local_model(tiny_hf, data)))
    assert "sft_train / sft_eval only" in msg


# --- semantic checks: GPU, model directory, K-quant widths, units, data files --------------------


def test_gpu_only_variant_without_gpus(monkeypatch):
    # no variant needs a GPU today (GPTQModel runs on the CPU): gpu_jobs false keeps every variant
    cfg = copy.deepcopy(DEFAULT)
    cfg.update(gpu_jobs=False, hf_variants=["hf-nf4", "hf-gptq4"])
    validate(cfg)
    monkeypatch.setattr("quantflow.config.GPU_ONLY_VARIANTS", ("hf-gptq4",))  # the rule, once one does
    msg = broken(lambda c: c.update(gpu_jobs=False, hf_variants=["hf-nf4", "hf-gptq4"]))
    assert msg.startswith("config key hf_variants[1]: hf-gptq4 needs a CUDA GPU but gpu_jobs is false")


def _hf_copy(tiny_hf, tmp_path, **cfg_changes):
    d = tmp_path / "hf"
    shutil.copytree(tiny_hf, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(cfg_changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_local_model_without_weights(tiny_hf, tiny_data, tmp_path):
    d = _hf_copy(tiny_hf, tmp_path)
    for w in d.glob("*.safetensors"):
        w.unlink()
    msg = broken(lambda c: c["models"].append(_local_model(d, _data(tiny_data))))
    assert msg.startswith(f"config key models[1].path: {d}: no weights (*.safetensors or *.bin)")


def test_local_model_without_tokenizer(tiny_hf, tiny_data, tmp_path):
    d = _hf_copy(tiny_hf, tmp_path)
    for t in ("tokenizer.json", "tokenizer.model"):
        (d / t).unlink(missing_ok=True)
    msg = broken(lambda c: c["models"].append(_local_model(d, _data(tiny_data))))
    assert msg.startswith(f"config key models[1].path: {d}: no tokenizer")


def test_widths_that_do_not_fit_warn_and_never_fail(tiny_hf, tiny_data, tmp_path):
    """A Qwen2.5-0.5B-shaped model with the default K-quants: accepted, with a warning per type."""
    from quantflow.config import model_warnings

    d = _hf_copy(tiny_hf, tmp_path, hidden_size=896, intermediate_size=4864, num_attention_heads=14, head_dim=64,
                 tie_word_embeddings=True)
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"].append(_local_model(d, _data(tiny_data)))
    cfg = validate(cfg)
    warnings = model_warnings(cfg, Path("."))
    q4km = [w for w in warnings if " of Q4_K_M:" in w]
    assert len(q4km) == 1 and q4km[0].startswith("config key models[1].path:")
    assert "blk.*.attn_q (width 896: Q4_K -> Q5_0)" in q4km[0] and "ffn_down" not in q4km[0]  # 4864 = 19 x 256
    assert any(" of Q4_K_M-imat:" in w for w in warnings)
    assert not any(" of Q8_0:" in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    strict = copy.deepcopy(cfg)
    strict["quants"] = [{"type": "Q4_0", "strict_types": True}]
    strict["imatrix"] = {"types": []}
    (w,) = model_warnings(validate(strict), Path("."))
    assert "token_embd (width 896: Q6_K -> Q8_0)" in w and "strict_types is set" in w


def test_demo_attention_width_not_multiple_of_256_warns():
    from quantflow.config import model_warnings

    cfg = copy.deepcopy(DEFAULT)
    cfg["demo"]["model"].update(heads=6, head_dim=64)
    warnings = model_warnings(validate(cfg), Path("."))
    assert warnings and all(w.startswith("config key demo.model:") for w in warnings)
    assert any("blk.*.attn_output (width 384: Q4_K -> Q5_0)" in w for w in warnings)


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("ram_budget_mb", "4GB", "'4GB' is text; ram_budget_mb is a number in MiB: write 4096"),
        ("ram_budget_mb", "512 MiB", "write 512"),
        ("ram_budget_mb", 4, "4 MiB is too small to be meant in MiB (the unit of this key); for 4 GB write 4096"),
        ("vram_budget_mb", 0.5, "for 0.5 GB write 512"),
        ("latency_target_ms", "0.25s", "latency_target_ms is a number in ms: write 250"),
        ("latency_target_ms", 0.25, "for 0.25 s write 250"),
        ("min_accuracy", 15, "15 is above 1; min_accuracy is a fraction of the test questions (for 15 % write 0.15)"),
        ("min_accuracy", "15%", "write 0.15"),
    ],
)
def test_budget_in_the_wrong_unit(key, value, expect):
    msg = broken(lambda c: c["report"].__setitem__(key, value))
    assert msg.startswith(f"config key report.{key}: ") and expect in msg


def test_budgets_in_their_units_pass():
    cfg = copy.deepcopy(DEFAULT)
    cfg["report"].update(ram_budget_mb=64, vram_budget_mb=4096, latency_target_ms=250, min_accuracy=0.15)
    validate(cfg)


@pytest.mark.parametrize(
    "field,content,expect",
    [
        ("sft_train", '{"prompt": "Q", "answer": "A"}\n', "row 1 lacks field(s) completion"),
        ("prompts", "", "has no items"),
        ("test", '{"id": "a", "category": "x", "prompt": "Q"}\n', "item 0: missing answer, checker"),
        ("heldout", "\n", "empty; the held-out and calibration texts need plain text"),
    ],
)
def test_data_files_with_unusable_content(tiny_hf, tiny_data, tmp_path, field, content, expect):
    bad = tmp_path / Path(tiny_data[field]).name
    bad.write_text(content)
    data = {**_data(tiny_data), field: bad}
    msg = broken(lambda c: c["models"].append(_local_model(tiny_hf, data)))
    assert msg.startswith(f"config key models[1].data.{field}: {bad}") and expect in msg


def test_gptq_settings_are_validated_and_complete():
    from quantflow.gptq import DEFAULTS, settings_of

    cfg = validate(copy.deepcopy(DEFAULT))
    assert set(cfg["gptq"]) == set(DEFAULTS) and settings_of(cfg["gptq"]) == cfg["gptq"]
    assert broken(lambda c: c.__setitem__("gptq", {"groupsize": 64})).startswith(
        "config key gptq: unknown key(s) groupsize"
    )
    assert broken(lambda c: c.__setitem__("gptq", {"damp_percent": 2})).startswith("config key gptq.damp_percent:")


def test_an_unknown_key_holding_a_line_break_is_named_in_one_line():
    msg = broken(lambda c: c["bench"].__setitem__("gen\ntokens", 8))
    assert msg.startswith(r"config key bench: unknown key(s) 'gen\ntokens'; allowed here: ")


def test_a_key_that_is_not_plain_is_quoted_in_the_key_path():
    from quantflow.schema import key_path

    assert key_path(["bench", "hf", "gen_tokens"]) == "bench.hf.gen_tokens"
    assert key_path(["models", 0, "a b", "x\ny"]) == r"models[0]['a b']['x\ny']"


def test_a_value_holding_a_line_break_is_echoed_in_one_line():
    data = dict.fromkeys(["sft_train", "sft_eval", "test", "heldout", "prompts"], "missing.jsonl")
    model = {"name": "mine", "source": "local", "path": "no\nsuch\u2028dir", "data": data}
    msg = broken(lambda c: c["models"].append(model))
    assert msg.startswith(r"config key models[1].path: no\nsuch\u2028dir is not a Hugging Face model directory")
    assert len(msg.splitlines()) == 1


def test_minimum_repetitions_above_the_maximum_names_both_keys():
    msg = broken(lambda c: c["bench"].update(repetitions=30, max_repetitions=5))
    assert msg.startswith("config key bench.repetitions: 30 is above bench.max_repetitions (5)")


@pytest.mark.parametrize(
    "hf,expect",
    [
        (
            {"repetitions": 6, "max_repetitions": 4},
            "config key bench.hf.repetitions: 6 is above bench.hf.max_repetitions (4)",
        ),
        ({"max_repetitions": 4}, "config key bench.repetitions: 7 is above bench.hf.max_repetitions (4)"),
        ({"repetitions": 25}, "config key bench.hf.repetitions: 25 is above bench.max_repetitions (20)"),
    ],
)
def test_minimum_repetitions_above_the_maximum_in_the_hf_overrides(hf, expect):
    msg = broken(lambda c: c["bench"].update(repetitions=7, max_repetitions=20, hf=hf))
    assert msg.startswith(expect), msg


def test_minimum_equal_to_the_maximum_is_fine():
    cfg = copy.deepcopy(DEFAULT)
    cfg["bench"].update(repetitions=5, max_repetitions=5, hf={"repetitions": 3, "max_repetitions": 3})
    assert validate(cfg)["bench"]["max_repetitions"] == 5


def test_a_depth_deeper_than_the_reference_is_refused_before_any_job():
    msg = broken(lambda c: c["bench"].update(depths=[0, 100_000]))
    assert msg.startswith("config key bench.depths: 100000 tokens deep, but the reference holds at most")


def test_gguf_devices_default_to_the_cpu_alone():
    cfg = copy.deepcopy(DEFAULT)
    cfg.pop("gguf_devices", None)
    assert validate(cfg)["gguf_devices"] == ["cpu"]
    cfg["gguf_devices"] = ["gpu", "cpu"]
    assert validate(cfg)["gguf_devices"] == ["gpu", "cpu"]


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(["cpu", "tpu"], "config key gguf_devices[1]: 'tpu' is not one of ['cpu', 'gpu']"),
     (["cpu", "cpu"], "config key gguf_devices: ['cpu', 'cpu'] has non-unique elements"),
     ([], "config key gguf_devices: [] should be non-empty")],
)
def test_gguf_devices_are_checked(devices, expected):
    assert broken(lambda c: c.update(gguf_devices=devices)).startswith(expected)


def test_gpu_rows_in_a_run_without_gpus():
    msg = broken(lambda c: c.update(gpu_jobs=False, gguf_devices=["cpu", "gpu"]))
    assert msg.startswith("config key gguf_devices[1]: gpu rows need a CUDA GPU but gpu_jobs is false")
