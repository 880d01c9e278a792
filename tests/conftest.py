"""Shared fixtures: a tiny real Llama model (HF directory and GGUF f16) built from the demo generator."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI, `make test`): a pass count never depends on luck
# and a failure reproduces. HYPOTHESIS_PROFILE=explore draws new examples on each run, and keeps the
# failing ones in .hypothesis/ to try first next time. Loaded here, before the test modules build their
# own settings objects (those inherit from the profile in force when they are made).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP_DIR = REPO / ".venv" / "llama.cpp"
TINY_SIZES = dict(
    countries=12,
    creatures=8,
    corpus_lines=300,
    heldout_lines=40,
    calibration_lines=10,
    sft_train=64,
    sft_eval=8,
    test=14,
    prompts=7,
)

# Bench settings for the tiny model (HF and GPTQ bench tests): short, but the whole protocol.
TINY_BENCH = dict(
    n_ctx=64,
    max_chunks=2,
    topk=16,
    prompt_tokens=16,
    gen_tokens=8,
    warmup=1,
    repetitions=3,
    max_repetitions=4,
    target_ci=0.03,
    max_answer_tokens=4,
)

# What the slow tests write at their peak (one real-model run: its GGUFs and merged weights, plus the
# session's smaller runs): 2.7-3.0 GB, measured with a disk sampler over two whole `make test` runs.
PEAK_DISK_GB = 4


def pytest_report_header(config) -> str:
    """The free disk where the tests write, first thing: a full disk fails a job deep in a workflow run."""
    where = Path(config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    low = f" (the slow tests need about {PEAK_DISK_GB} GB)" if free < PEAK_DISK_GB else ""
    return f"disk: {free:.1f} GB free under {where}{low}"


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    from quantflow.data import write_demo_data

    d = tmp_path_factory.mktemp("data")
    out = {
        k: d / f"{k}.{'txt' if k in ('corpus', 'heldout', 'calibration') else 'jsonl'}"
        for k in ("corpus", "heldout", "calibration", "sft_train", "sft_eval", "test", "prompts")
    }
    write_demo_data({k: str(v) for k, v in out.items()}, seed=3, sizes=TINY_SIZES)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data, tmp_path_factory) -> Path:
    from quantflow.demo import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_tokenizer([tiny_data["corpus"]], d, 400, jsonl=[tiny_data["sft_train"]])
    return d


def build_tiny_hf(
    tokenizer_dir: Path,
    out: Path,
    hidden: int = 256,
    ffn: int = 512,
    layers: int = 2,
    seed: int = 0,
    arch: str = "llama",
    tied: bool = False,
) -> Path:
    """A randomly initialised tiny model saved like a real checkpoint (weights + tokenizer.model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from quantflow.demo import save_tokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cls_cfg, cls_model = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (MistralConfig, MistralForCausalLM)
    cfg = cls_cfg(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model = cls_model(cfg)
    # Random init at std 0.02 gives near-uniform outputs; a larger scale makes the logits (and so
    # quantization error) non-trivial, like a trained model's.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(out)
    save_tokenizer(tok, out, tokenizer_dir / "tokenizer.model")
    return out


@pytest.fixture(scope="session")
def qwen2_tokenizer(tmp_path_factory) -> Path:
    """The real Qwen2 tokenizer (byte-level BPE, ChatML template), from llama.cpp's vocab GGUF (~30 s)."""
    import real_models

    return real_models.save_tokenizer("qwen2", tmp_path_factory.mktemp("qwen2-tok"))


@pytest.fixture(scope="session")
def llama3_tokenizer(tmp_path_factory) -> Path:
    """The real Llama 3 tokenizer (byte-level BPE, BOS added), from llama.cpp's vocab GGUF (~30 s)."""
    import real_models

    return real_models.save_tokenizer("llama3", tmp_path_factory.mktemp("llama3-tok"))


@pytest.fixture(scope="session")
def tiny_hf(tiny_tokenizer, tmp_path_factory) -> Path:
    return build_tiny_hf(tiny_tokenizer, tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def tiny_f16(tiny_hf, tmp_path_factory) -> Path:
    from quantflow.convert import convert

    if not (LLAMA_CPP_DIR / "convert_hf_to_gguf.py").exists():
        pytest.fail("llama.cpp's converter is missing: run `make test` (it sets up .venv/llama.cpp)")
    out = tmp_path_factory.mktemp("gguf") / "f16.gguf"
    convert(tiny_hf, out, LLAMA_CPP_DIR)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run of the tiny config through the Snakefile, shared by the workflow and browser tests.

    Set QUANTFLOW_TINY_RUN to a folder to run there instead of in a temporary one: a later session then
    only redoes what changed (Snakemake brings the folder up to date). The run is the real one either way.
    """
    import subprocess
    import sys

    chosen = os.environ.get("QUANTFLOW_TINY_RUN")
    wd = Path(chosen) if chosen else tmp_path_factory.mktemp("tinyrun")
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd)]
    cmd += ["--configfile", str(REPO / "tests" / "configs" / "tiny.yaml"), "--cores", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    (wd / "console.txt").write_text(p.stdout + p.stderr)  # what a user sees (test_workflow checks it)
    assert p.returncode == 0, p.stderr[-3000:]
    return wd
