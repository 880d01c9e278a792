"""Rendered prompts and tokenizer parity on real tokenizers (Qwen2 with its chat template, Llama 3, the
demo's SentencePiece), with real GGUFs made by llama.cpp's converter."""

from __future__ import annotations

import json
import shutil

import pytest
import real_models
from conftest import LLAMA_CPP_DIR

from quantflow.convert import convert
from quantflow.data import read_jsonl
from quantflow.prompt_format import render_suites, resolve_format
from quantflow.suites import load_suite
from quantflow.tokenizer_parity import TokenizerMismatch, check, first_difference, texts_to_check

pytestmark = pytest.mark.slow

HELDOUT = "The capital of Kalomi is Sati. 7 + 5 = 12.\n  Indented line, tabs\tand naïve café 日本語.\n"


@pytest.fixture(scope="module")
def qwen2(qwen2_tokenizer, tmp_path_factory):
    """A one-layer Qwen2.5-0.5B-shaped model and its f16 GGUF."""
    d = tmp_path_factory.mktemp("qwen2")
    hf = real_models.build("qwen2", qwen2_tokenizer, d / "hf", layers=1)
    convert(hf, d / "f16.gguf", LLAMA_CPP_DIR)
    yield hf, d / "f16.gguf"
    real_models.drop_weights(d)


def _render(hf, tiny_data, tmp_path, setting=None):
    suites = {"test": load_suite(tiny_data["test"]), "prompts": load_suite(tiny_data["prompts"])}
    out = {k: str(tmp_path / f"{k}.jsonl") for k in suites}
    fmt = render_suites(hf, suites, out, setting)
    return fmt, {k: read_jsonl(v) for k, v in out.items()}


def test_chat_template_renders_every_item_and_both_engines_see_the_same_tokens(qwen2, tiny_data, tmp_path):
    hf, gguf = qwen2
    fmt, rendered = _render(hf, tiny_data, tmp_path)
    assert fmt == "chat"
    item = rendered["test"][0]
    assert item["prompt"].startswith("<|im_start|>system\n") and item["prompt"].endswith("<|im_start|>assistant\n")
    assert item["source_prompt"] in item["prompt"] and item["add_bos"] is False
    summary = check(hf, gguf, texts_to_check(HELDOUT, rendered))
    assert summary["texts"] == 1 + len(rendered["test"]) + len(rendered["prompts"])
    from llama_cpp import Llama

    from quantflow.bench import encode_item

    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    ids = encode_item(llm, item)
    assert ids[0] == 151644 and ids.count(151644) == 3  # <|im_start|> x3: system, user, assistant


def test_plain_format_is_kept_when_asked_and_for_tokenizers_without_a_template(qwen2, tiny_hf, tiny_data, tmp_path):
    hf, _ = qwen2
    fmt, rendered = _render(hf, tiny_data, tmp_path / "q", "plain")
    assert fmt == "plain" and rendered["test"][0]["prompt"] == load_suite(tiny_data["test"])[0]["prompt"]
    assert rendered["test"][0]["add_bos"] is True
    fmt, _ = _render(tiny_hf, tiny_data, tmp_path / "demo")
    assert fmt == "plain"
    with pytest.raises(ValueError, match="prompt_format is chat but the tokenizer has no chat template"):
        _render(tiny_hf, tiny_data, tmp_path / "bad", "chat")


def test_demo_sentencepiece_and_llama3_bpe_tokenize_alike_in_both_engines(
    tiny_hf, tiny_f16, llama3_tokenizer, tiny_data, tmp_path
):
    _, rendered = _render(tiny_hf, tiny_data, tmp_path / "demo")
    heldout = tiny_data["heldout"].read_text()
    check(tiny_hf, tiny_f16, texts_to_check(heldout, rendered))
    hf = real_models.build("llama3", llama3_tokenizer, tmp_path / "llama3", layers=1)
    convert(hf, tmp_path / "llama3.gguf", LLAMA_CPP_DIR)
    _, rendered = _render(hf, tiny_data, tmp_path / "l3")
    summary = check(hf, tmp_path / "llama3.gguf", texts_to_check(heldout + HELDOUT, rendered))
    assert summary["tokens"] > 100
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(hf)("hi").input_ids[0] == 128000  # BOS, as Llama 3 adds it


def test_a_vocabulary_that_differs_fails_naming_the_first_text(qwen2, qwen2_tokenizer, tiny_data, tmp_path):
    """The GGUF's vocabulary is checked against a tokenizer whose merges were cut: the job must fail."""
    hf, gguf = qwen2
    bad = tmp_path / "bad-hf"
    shutil.copytree(hf, bad)
    j = json.loads((bad / "tokenizer.json").read_text())
    j["model"]["merges"] = j["model"]["merges"][: len(j["model"]["merges"]) // 50]
    (bad / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False))
    _, rendered = _render(hf, tiny_data, tmp_path)
    with pytest.raises(TokenizerMismatch, match=r"tokenizes the held-out text differently .* from token \d+") as e:
        check(bad, gguf, texts_to_check(HELDOUT, rendered))
    assert "\n" not in str(e.value)
    out = tmp_path / "out" / "f16.gguf"
    with pytest.raises(TokenizerMismatch):  # inside convert: nothing is left at the output path
        convert(hf, out, LLAMA_CPP_DIR, verify=lambda g: check(bad, g, texts_to_check(HELDOUT, rendered)))
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], []) is None


def test_resolve_format_names_the_allowed_values():
    class Tok:
        chat_template = None

    assert resolve_format(None, Tok()) == "plain"
    with pytest.raises(ValueError, match="not one of chat, plain"):
        resolve_format("chatml", Tok())
