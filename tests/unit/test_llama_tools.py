"""Our figures against llama.cpp's own tools, on the same tiny model, text and context."""

import pytest
from conftest import LLAMA_CPP_DIR

from quantflow import bench
from quantflow.llama_tools import llama_bench, llama_perplexity
from quantflow.quantize import quantize

N_CTX, CHUNKS = 64, 4


@pytest.fixture(scope="module")
def q4(tiny_f16, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "Q4_K_M.gguf"
    quantize(tiny_f16, out, {"type": "Q4_K_M"}, 2, LLAMA_CPP_DIR)
    return out


def test_perplexity_and_kl_agree_with_llama_perplexity(tiny_f16, q4, tiny_data, tmp_path):
    from conftest import LLAMA_CPP_DIR

    text = tiny_data["heldout"]
    # topk = the whole vocabulary: this test is about the pipeline (tokens, chunks, scored positions),
    # the top-k truncation has its own test.
    cfg = dict(n_ctx=N_CTX, max_chunks=CHUNKS, topk=100_000)
    ref = bench.make_reference(tiny_f16, text.read_text(), cfg, threads=2)
    ours = bench.measure_quality(q4, ref, cfg, threads=2)
    base = tmp_path / "f16.kld"
    theirs_f16 = llama_perplexity(LLAMA_CPP_DIR, tiny_f16, text, N_CTX, CHUNKS, 2)
    llama_perplexity(LLAMA_CPP_DIR, tiny_f16, text, N_CTX, CHUNKS, 2, save_base=base)
    theirs = llama_perplexity(LLAMA_CPP_DIR, q4, text, N_CTX, CHUNKS, 2, kl_base=base)
    import numpy as np

    assert float(np.exp(ref["nll"].mean())) == pytest.approx(theirs_f16["ppl"], rel=0.01)
    assert ours["ppl"] == pytest.approx(theirs["ppl"], rel=0.01)
    assert ours["kl_mean"] == pytest.approx(theirs["kl_mean"], rel=0.05)
    assert ours["top1_agreement"] == pytest.approx(theirs["top1_agreement"], abs=0.02)


def test_llama_bench_reports_pp_and_tg(q4):
    from conftest import LLAMA_CPP_DIR

    r = llama_bench(LLAMA_CPP_DIR, q4, threads=2, n_prompt=16, n_gen=8, reps=2)
    assert r["pp_tps"] > 0 and r["tg_tps"] > 0 and r["pp_tokens"] == 16 and r["tg_tokens"] == 8
    # like our own decode: tg after the prompt is in the cache, pp from an empty one
    assert r["tg_depth"] == 16 and r["pp_depth"] == 0


def test_llama_bench_at_several_depths(q4):
    from conftest import LLAMA_CPP_DIR

    r = llama_bench(LLAMA_CPP_DIR, q4, threads=2, n_prompt=16, n_gen=8, reps=1, depths=[0, 32])
    assert set(r["tg_by_depth"]) == {0, 16, 32} and all(tps > 0 for tps, _ in r["tg_by_depth"].values())
    assert r["tg_by_depth"][16][0] == r["tg_tps"]
