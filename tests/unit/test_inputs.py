"""Broken inputs give one line naming the file and the fix; outputs appear whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import LLAMA_CPP_DIR

from quantflow import atomic
from quantflow.inputs import InputError, check_hf_dir, check_sft_file, check_text_file, hf_dims
from quantflow.memory import GGUF_OVERHEAD_MB, MB, InsufficientMemory, check_memory, refusal, required_bytes
from quantflow.quantize import check_gguf, tensor_summary

REPO = Path(__file__).resolve().parents[2]


def _cut(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


@pytest.mark.parametrize("keep", [0, 3, 200, 0.5, -1])
def test_truncated_gguf_is_refused_naming_the_file_and_the_fix(tiny_f16, tmp_path, keep):
    check_gguf(tiny_f16)  # the intact file passes
    size = tiny_f16.stat().st_size
    n = {0.5: size // 2, -1: size - 1}.get(keep, keep)
    bad = _cut(tiny_f16, tmp_path / "Q4_K_M.gguf", n)
    with pytest.raises(ValueError) as e:
        check_gguf(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "delete it and rerun" in msg
    if keep in (0.5, -1):
        assert "truncated" in msg and f"{n} " in msg


def test_gguf_with_bad_magic(tiny_f16, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + tiny_f16.read_bytes()[4:])
    with pytest.raises(ValueError, match="bad magic"):
        check_gguf(bad)


def test_quantize_refuses_a_truncated_f16_and_leaves_nothing(tiny_f16, tmp_path):
    from quantflow.quantize import quantize

    bad = _cut(tiny_f16, tmp_path / "f16.gguf", tiny_f16.stat().st_size // 3)
    out = tmp_path / "out" / "Q8_0.gguf"
    out.parent.mkdir()
    with pytest.raises(ValueError, match=r"f16.gguf: truncated (or corrupted )?GGUF"):
        quantize(bad, out, {"type": "Q8_0"}, 1, LLAMA_CPP_DIR)
    assert list(out.parent.iterdir()) == []


def test_quantize_writes_no_partial_files(tiny_f16, tmp_path):
    from quantflow.quantize import quantize

    out = tmp_path / "Q8_0.gguf"
    (tmp_path / ".Q8_0.gguf.partial-99999.gguf").write_bytes(b"left by a killed job")
    quantize(tiny_f16, out, {"type": "Q8_0"}, 1, LLAMA_CPP_DIR)
    check_gguf(out)
    assert [p.name for p in tmp_path.iterdir()] == ["Q8_0.gguf"]


def test_widths_and_tied_embeddings_are_read_from_config_json(tiny_tokenizer, tmp_path):
    from conftest import build_tiny_hf

    hf = build_tiny_hf(tiny_tokenizer, tmp_path / "hf", hidden=320, ffn=384, layers=1, tied=True)
    assert hf_dims(hf) == {"hidden": 320, "ffn": 384, "q_width": 320, "tied": True}


def _copy_hf(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hf_dir_checks(tiny_hf, tmp_path):
    check_hf_dir(tiny_hf)
    no_weights = _copy_hf(tiny_hf, tmp_path / "a")
    for w in no_weights.glob("*.safetensors"):
        w.unlink()
    with pytest.raises(InputError, match=r"no weights \(\*\.safetensors or \*\.bin\); copy the model's weight"):
        check_hf_dir(no_weights)
    cut = _copy_hf(tiny_hf, tmp_path / "b")
    w = next(cut.glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[: w.stat().st_size - 1000])
    with pytest.raises(InputError, match=f"{w}: truncated safetensors file"):
        check_hf_dir(cut)
    no_tok = _copy_hf(tiny_hf, tmp_path / "c")
    for t in ("tokenizer.json", "tokenizer.model"):
        (no_tok / t).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no tokenizer"):
        check_hf_dir(no_tok)


def test_convert_names_a_weightless_directory_before_running_the_converter(tiny_hf, tmp_path):
    from conftest import LLAMA_CPP_DIR

    from quantflow.convert import convert

    d = _copy_hf(tiny_hf, tmp_path / "hf")
    for w in d.glob("*.safetensors"):
        w.unlink()
    out = tmp_path / "out" / "f16.gguf"
    with pytest.raises(InputError) as e:
        convert(d, out, LLAMA_CPP_DIR)
    assert str(d) in str(e.value) and "no weights" in str(e.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_sft_rows_without_the_needed_fields(tiny_data, tmp_path):
    check_sft_file(tiny_data["sft_train"])
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "Q", "completion": " A"}\n{"prompt": "Q2", "answer": "A2"}\n')
    with pytest.raises(InputError, match=rf"{bad}: row 2 lacks field\(s\) completion; each row needs 'prompt'"):
        check_sft_file(bad)
    csv = tmp_path / "train.csv"
    csv.write_text("question,completion\nQ,A\n")
    with pytest.raises(InputError, match="the header lacks field"):
        check_sft_file(csv)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        check_sft_file(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "Q", "completion": " A"}\n{"prompt": \n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        check_sft_file(broken)


def test_text_files_must_hold_text(tiny_data, tmp_path):
    check_text_file(tiny_data["heldout"])
    empty = tmp_path / "heldout.txt"
    empty.write_text("  \n")
    with pytest.raises(InputError, match=f"{empty}: empty"):
        check_text_file(empty)


# --- memory -------------------------------------------------------------------------------------


def test_refusal_is_a_pure_decision():
    assert refusal("m.gguf", 100 * MB, 100 * MB) is None
    msg = refusal("m.gguf", 3000 * MB, 1000 * MB)
    assert msg.startswith("m.gguf: needs about 3,000 MiB") and "only 1,000 MiB is available" in msg


def test_memory_estimate_and_refusal_of_real_models(tiny_f16, tiny_hf):
    need = required_bytes(tiny_f16)
    assert need == int(tiny_f16.stat().st_size * 1.1 + GGUF_OVERHEAD_MB * MB)
    n_params = sum(p["n_params"] for p in [tensor_summary(tiny_f16)])
    hf_need = required_bytes(tiny_hf)
    assert hf_need > 4 * n_params  # float32 parameters plus the torch baseline
    assert check_memory(tiny_f16) == need  # this machine has room for a tiny model
    with pytest.raises(InsufficientMemory) as e:
        check_memory(tiny_f16, available=64 * MB)
    assert str(tiny_f16) in str(e.value) and "64 MiB is available" in str(e.value)


# --- atomic outputs -----------------------------------------------------------------------------


def test_atomic_file_keeps_the_old_content_when_the_writer_fails(tmp_path):
    out = tmp_path / "m.json"
    atomic.write_json(out, {"a": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(out) as tmp:
        tmp.write_text('{"a": ')
        raise RuntimeError("killed half way")
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_directory_replaces_a_stale_one_and_clears_leftovers(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.bin").write_text("old")
    (tmp_path / ".hf.partial-1").mkdir()  # what a killed writer leaves
    with atomic.atomic_path(out, directory=True) as tmp:
        assert tmp.is_dir() and not (tmp / "old.bin").exists()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert [p.name for p in out.iterdir()] == ["config.json"]
