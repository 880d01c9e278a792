"""Real quantization of a tiny real model, read back with gguf's reader."""

from pathlib import Path

import pytest

from quantflow.quantize import ALLOWED_TYPES, check_gguf, fallback_tensors, quantize, tensor_summary

DEFAULT_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_L", "Q3_K_M"]


def test_f16_is_complete_and_typed(tiny_f16):
    check_gguf(tiny_f16)
    s = tensor_summary(tiny_f16)
    assert set(s["tensor_types"]) == {"F16", "F32"}
    assert 15.9 < s["bits_per_weight"] < 16.1


@pytest.mark.parametrize("qtype", DEFAULT_TYPES)
def test_quantize_writes_the_requested_types(tiny_f16, tmp_path, qtype):
    out = tmp_path / f"{qtype}.gguf"
    s = quantize(tiny_f16, out, {"type": qtype}, threads=2)
    weights = {n: t for n, (t, shape) in s["tensors"].items() if len(shape) == 2}
    assert set(weights.values()) <= ALLOWED_TYPES[qtype]
    main = qtype.split("_K")[0] + "_K" if "_K" in qtype else qtype
    assert main in weights.values()
    assert s["bits_per_weight"] < 9
    assert not list(tmp_path.glob(".*partial"))


def test_tensor_type_overrides(tiny_f16, tmp_path):
    s = quantize(
        tiny_f16,
        tmp_path / "o.gguf",
        {"type": "Q4_K_M", "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"},
        threads=2,
    )
    assert s["tensors"]["output.weight"][0] == "Q8_0"
    assert s["tensors"]["token_embd.weight"][0] == "Q8_0"


def test_fallback_is_detected_and_named(tiny_tokenizer, tmp_path):
    """hidden 320 is not a multiple of 256: llama.cpp silently writes other types; we must fail."""
    from conftest import LLAMA_CPP_DIR, build_tiny_hf

    from quantflow.convert import convert

    hf = build_tiny_hf(tiny_tokenizer, tmp_path / "hf", hidden=320, ffn=640)
    f16 = tmp_path / "f16.gguf"
    convert(hf, f16, LLAMA_CPP_DIR)
    with pytest.raises(RuntimeError, match=r"fell back .*blk\.0\.") as e:
        quantize(f16, tmp_path / "q.gguf", {"type": "Q4_K_M"}, threads=2)
    assert "multiples of 256" in str(e.value)
    assert not (tmp_path / "q.gguf").exists()


def test_fallback_rule_pure():
    tensors = {
        "blk.0.attn_q.weight": ("Q4_0", [320, 320]),
        "blk.0.attn_norm.weight": ("F32", [320]),
        "blk.0.ffn_up.weight": ("Q4_K", [512, 256]),
    }
    assert fallback_tensors(tensors, "Q4_K_M", {}) == ["blk.0.attn_q.weight=Q4_0"]


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
    from conftest import LLAMA_CPP_DIR
    from gguf import GGUFReader

    from quantflow.llama_tools import imatrix

    imat = tmp_path / "imatrix.gguf"
    imatrix(LLAMA_CPP_DIR, tiny_f16, tiny_data["corpus"], imat, n_ctx=64, chunks=4, threads=2)
    check_gguf(imat)
    for qtype in ("Q4_K_M", "Q3_K_M"):
        plain = quantize(tiny_f16, tmp_path / f"{qtype}.gguf", {"type": qtype}, threads=2)
        withi = quantize(tiny_f16, tmp_path / f"{qtype}-imat.gguf", {"type": qtype}, threads=2, imatrix=imat,
                         llama_cpp_dir=LLAMA_CPP_DIR)  # fmt: skip
        assert {t for t, s in withi["tensors"].values() if len(s) == 2} <= ALLOWED_TYPES[qtype]
        assert withi["tensor_types"] == plain["tensor_types"]
        a = {t.name: bytes(t.data) for t in GGUFReader(tmp_path / f"{qtype}.gguf").tensors}
        b = {t.name: bytes(t.data) for t in GGUFReader(tmp_path / f"{qtype}-imat.gguf").tensors}
        assert a["blk.0.ffn_down.weight"] != b["blk.0.ffn_down.weight"]  # the matrix changed the rounding
