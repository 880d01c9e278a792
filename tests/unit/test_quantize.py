"""Real quantization of tiny real models with llama-quantize, read back with gguf's reader."""

from pathlib import Path

import pytest
from conftest import LLAMA_CPP_DIR, build_tiny_hf

from quantflow.convert import convert
from quantflow.gguf_types import default_type, model_widths, predicted_fallbacks, shape_fallback
from quantflow.quantize import check_gguf, is_weight, quantize, tensor_summary

DEFAULT_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_L", "Q3_K_M"]


def q(src, dst, opts, **kw):
    return quantize(src, dst, opts, 2, LLAMA_CPP_DIR, **kw)


@pytest.fixture(scope="module")
def odd_f16(tiny_tokenizer, tmp_path_factory) -> Path:
    """hidden 320 and FFN 640, tied embeddings: rows K-quants cannot take (Qwen2.5-0.5B's 896 alike)."""
    d = tmp_path_factory.mktemp("odd")
    hf = build_tiny_hf(tiny_tokenizer, d / "hf", hidden=320, ffn=640, tied=True)
    convert(hf, d / "f16.gguf", LLAMA_CPP_DIR)
    return d / "f16.gguf"


def test_f16_is_complete_and_typed(tiny_f16):
    check_gguf(tiny_f16)
    s = tensor_summary(tiny_f16)
    assert set(s["tensor_types"]) == {"F16", "F32"}
    assert 15.9 < s["bits_per_weight"] < 16.1


@pytest.mark.parametrize("qtype", DEFAULT_TYPES)
def test_quantize_plan_of_a_model_whose_widths_fit(tiny_f16, tmp_path, qtype):
    out = tmp_path / f"{qtype}.gguf"
    plan = q(tiny_f16, out, {"type": qtype})
    summary = tensor_summary(out)
    weights = {n: t for n, (t, shape, _) in summary["tensors"].items() if is_weight(shape)}
    assert default_type(qtype) in weights.values()
    assert plan["n_fallback"] == 0 and plan["fallbacks"] == []
    assert plan["reported_fallback_count"] in (None, 0)
    # every weight not of the ftype's own type is explained, and none of them as a fallback
    off = {o["tensor"]: o for o in plan["off_type"]}
    assert set(off) == {n for n, t in weights.items() if t != default_type(qtype)}
    assert all(not o["reason"].startswith("fallback") for o in off.values())
    assert sum(v["tensors"] for v in plan["types"].values()) == len(summary["tensors"])
    assert plan["bits_per_weight"] == pytest.approx(summary["bits_per_weight"])
    assert plan["bits_per_weight"] < 9
    assert not list(tmp_path.glob(".*partial*"))


def test_tensor_type_overrides(tiny_f16, tmp_path):
    opts = {"type": "Q4_K_M", "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"}
    plan = q(tiny_f16, tmp_path / "o.gguf", opts)
    s = tensor_summary(tmp_path / "o.gguf")
    assert s["tensors"]["output.weight"][0] == "Q8_0"
    assert s["tensors"]["token_embd.weight"][0] == "Q8_0"
    reasons = {o["tensor"]: o["reason"] for o in plan["off_type"]}
    assert reasons["output.weight"].startswith("override")


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q6_K", "Q4_0", "Q8_0"])
def test_widths_that_do_not_fit_are_quantized_as_llama_cpp_does_and_recorded(odd_f16, tmp_path, qtype):
    """Never refused: the file is written, and the plan holds llama.cpp's own report of its fallbacks."""
    out = tmp_path / f"{qtype}.gguf"
    plan = q(odd_f16, out, {"type": qtype})
    check_gguf(out)
    real = {n: t for n, (t, _, _) in tensor_summary(out)["tensors"].items()}
    for f in plan["fallbacks"]:  # what llama.cpp said it wrote is what the file holds
        assert real[f["tensor"]] == f["written"], f
        assert f["ncols"] % f["block"] != 0
    if plan["reported_fallback_count"] is not None:  # its closing line can be lost at exit
        assert plan["reported_fallback_count"] == plan["n_fallback"]
    assert plan["tied_embeddings"] and "output.weight" not in real
    # the rule that follows llama.cpp's source predicts exactly the roles it reported
    widths = model_widths(hidden=320, ffn=640, q_width=320, tied=True)
    predicted = {p.split(" ")[0] for p in predicted_fallbacks(widths, qtype, tied=True)}
    reported = {f["tensor"].removesuffix(".weight") for f in plan["fallbacks"]}
    reported = {".".join("*" if x.isdigit() else x for x in r.split(".")) for r in reported}
    assert predicted == reported, (qtype, predicted, reported)
    if qtype == "Q8_0":
        assert plan["n_fallback"] == 0
    else:
        assert plan["n_fallback"] > 0
        fell = {f["tensor"] for f in plan["fallbacks"]}
        assert all(o["reason"].startswith("fallback") for o in plan["off_type"] if o["tensor"] in fell)
    if qtype == "Q4_0":  # tied: token_embd takes the output's Q6_K, which falls back to Q8_0 at width 320
        assert real["token_embd.weight"] == "Q8_0"
        assert [f["tensor"] for f in plan["fallbacks"]] == ["token_embd.weight"]


def test_strict_types_turns_a_fallback_into_a_failure(odd_f16, tmp_path):
    with pytest.raises(RuntimeError, match=r"Q4_K_M: llama.cpp fell back .*strict_types") as e:
        q(odd_f16, tmp_path / "s.gguf", {"type": "Q4_K_M", "strict_types": True})
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s.gguf").exists()
    assert not list(tmp_path.iterdir())


def test_default_type_and_fallback_rules_follow_llama_cpp():
    assert [default_type(t) for t in ("Q4_K_M", "Q3_K_L", "Q2_K_S", "Q8_0", "IQ3_M", "IQ2_M", "IQ4_XS")] == [
        "Q4_K", "Q3_K", "Q2_K", "Q8_0", "IQ3_S", "IQ2_S", "IQ4_XS"
    ]
    assert shape_fallback(896, "Q4_K") == "Q5_0"
    assert shape_fallback(896, "Q6_K") == "Q8_0"
    assert shape_fallback(896, "IQ3_S") == "IQ4_NL"
    assert shape_fallback(1024, "Q4_K") is None
    assert shape_fallback(100, "Q4_0") == "F16"  # a 32-block type on a row of 100: F16
    assert shape_fallback(100, "F16") is None
    widths = model_widths(hidden=896, ffn=4864, q_width=896, tied=True)  # Qwen2.5-0.5B
    assert predicted_fallbacks(widths, "Q8_0", tied=True) == []
    assert predicted_fallbacks(widths, "Q4_0", tied=True) == ["token_embd (width 896: Q6_K -> Q8_0)"]
    # 4864 = 19 x 256 fits; the tied token_embd goes straight to Q8_0 (the output rule), no fallback
    roles = {p.split(" ")[0] for p in predicted_fallbacks(widths, "Q4_K_M", tied=True)}
    assert roles == set(widths) - {"token_embd", "blk.*.ffn_down"}


def test_truncated_gguf_is_rejected(tiny_f16, tmp_path):
    data = Path(tiny_f16).read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.gguf"):
        check_gguf(bad)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + data[4:100])
    with pytest.raises(ValueError, match="bad magic"):
        check_gguf(junk)


def test_imatrix_variants_have_the_requested_types_and_differ(tiny_f16, tiny_data, tmp_path):
    """llama-imatrix on the calibration text, then llama-quantize with it: real types, different weights."""
    from gguf import GGUFReader

    from quantflow.llama_tools import imatrix

    imat = tmp_path / "imatrix.gguf"
    imatrix(LLAMA_CPP_DIR, tiny_f16, tiny_data["corpus"], imat, n_ctx=64, chunks=4, threads=2)
    check_gguf(imat)
    for qtype in ("Q4_K_M", "Q3_K_M"):
        plain = q(tiny_f16, tmp_path / f"{qtype}.gguf", {"type": qtype})
        withi = q(tiny_f16, tmp_path / f"{qtype}-imat.gguf", {"type": qtype}, imatrix=imat)
        assert withi["types"].keys() == plain["types"].keys() and withi["n_fallback"] == 0
        a = {t.name: bytes(t.data) for t in GGUFReader(tmp_path / f"{qtype}.gguf").tensors}
        b = {t.name: bytes(t.data) for t in GGUFReader(tmp_path / f"{qtype}-imat.gguf").tensors}
        assert a["blk.0.ffn_down.weight"] != b["blk.0.ffn_down.weight"]  # the matrix changed the rounding
