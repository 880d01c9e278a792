"""quantflow.deploy on a real tiny GGUF: the folder, its files, and the model served with the Modelfile's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_result

from quantflow import deploy
from quantflow.recommend import recommend
from quantflow.table import results_table


def _measured(gguf: Path, variant: str = "gguf-f16") -> dict:
    res = make_result("base", variant, kl_mean=0.0, model="tiny")
    res["file"].update(path=str(gguf), bytes=gguf.stat().st_size, sha256=deploy.sha256(gguf))
    res["speed"].update(n_ctx=64, threads=2)
    return res


def test_deploy_folder_serves_the_measured_file(tiny_f16: Path, tmp_path: Path) -> None:
    from llama_cpp import Llama

    results = [_measured(tiny_f16)]
    df = results_table(results)
    recs = recommend(df, 0.05)
    (folder,) = deploy.write(tmp_path / "deploy", recs, results, df.to_dict("records"), {"tiny": None})
    assert folder.name == "tiny-base"
    files = ["Modelfile", "README.md", "llama-server.sh", "tiny-base-F16.gguf"]
    assert sorted(p.name for p in folder.iterdir()) == files
    gguf = folder / "tiny-base-F16.gguf"
    assert gguf.stat().st_ino == tiny_f16.stat().st_ino  # hard-linked, not re-quantized or copied
    assert deploy.sha256(gguf) == results[0]["file"]["sha256"]

    modelfile = deploy.parse_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))
    assert modelfile["from"] == "./tiny-base-F16.gguf"
    params = modelfile["parameters"]
    assert params["num_ctx"] == ["64"] and params["num_thread"] == ["2"] and params["temperature"] == ["0"]
    assert "</s>" in params["stop"] and "\n" in params["stop"]  # the tokenizer's EOS, the bench's newline stop

    server = (folder / "llama-server.sh").read_text(encoding="utf-8")
    assert "--ctx-size 64" in server and "--threads 2" in server and "--flash-attn off" in server

    card = (folder / "README.md").read_text(encoding="utf-8")
    front = card.split("---\n")[1]
    assert 'base_model: "tiny (built by quantflow)"' in front and 'library_name: "gguf"' in front
    assert 'quantization: "F16"' in front
    kl_row = next(line for line in card.splitlines() if line.startswith("| KL vs f16 (mean ± SE) |"))
    assert kl_row.split("|")[2].strip().startswith("0 ± ")  # the f16 against itself, with its standard error
    assert f"CPU: {results[0]['provenance']['cpu']}" in card

    # The file answers when loaded the way the Modelfile says.
    llm = Llama(model_path=str(folder / modelfile["from"]), n_ctx=int(params["num_ctx"][0]),
                n_threads=int(params["num_thread"][0]), seed=0, verbose=False)
    out = llm.create_completion("Question: What is 2 plus 3?\nAnswer:", max_tokens=8, temperature=0.0, top_k=1,
                                stop=params["stop"])
    assert out["usage"]["completion_tokens"] >= 1 and isinstance(out["choices"][0]["text"], str)


def test_a_changed_file_is_refused_and_nothing_is_written(tiny_f16: Path, tmp_path: Path) -> None:
    results = [_measured(tiny_f16)]
    results[0]["file"]["sha256"] = "0" * 64
    df = results_table(results)
    with pytest.raises(ValueError, match="sha256 differs"):
        deploy.write(tmp_path / "deploy", recommend(df, 0.05), results, df.to_dict("records"))
    assert not (tmp_path / "deploy").exists()


def test_an_hf_variant_gets_the_loading_snippet(tmp_path: Path) -> None:
    res = make_result("base", "hf-nf4", "NF4", model="tiny")
    res["file"]["path"] = "results/tiny/base/hf"
    df = results_table([res])
    (folder,) = deploy.write(tmp_path / "deploy", recommend(df, 0.05), [res], df.to_dict("records"))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "load.py"]
    snippet = (folder / "load.py").read_text(encoding="utf-8")
    compile(snippet, "load.py", "exec")
    assert "load_in_4bit=True" in snippet and "'results/tiny/base/hf'" in snippet
    assert 'library_name: "transformers"' in (folder / "README.md").read_text(encoding="utf-8")


def test_a_new_recommendation_replaces_the_folder(tiny_f16: Path, tmp_path: Path) -> None:
    results = [_measured(tiny_f16)]
    df = results_table(results)
    deploy.write(tmp_path / "deploy", recommend(df, 0.05), results, df.to_dict("records"))
    (tmp_path / "deploy" / "stale.txt").write_text("from an older recommendation")
    # Now the same model / fine-tune is recommended as an HF variant: the GGUF folder goes with it.
    hf = make_result("base", "hf-nf4", "NF4", model="tiny", decode_tps=1e6)
    both = [*results, hf]
    df = results_table(both)
    (folder,) = deploy.write(tmp_path / "deploy", recommend(df, 0.05), both, df.to_dict("records"))
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["tiny-base"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "load.py"]


def test_each_device_gets_its_folder(tiny_f16: Path, tmp_path: Path) -> None:
    results = [_measured(tiny_f16), _measured(tiny_f16, "gguf-f16@gpu")]
    assert results[1]["device"] == "gpu"
    df = results_table(results)
    folders = deploy.write(tmp_path / "deploy", recommend(df, 0.05), results, df.to_dict("records"))
    assert [f.name for f in folders] == ["tiny-base", "tiny-base-gpu"]
    assert "--n-gpu-layers 0" in (folders[0] / "llama-server.sh").read_text(encoding="utf-8")
    assert "--n-gpu-layers 99" in (folders[1] / "llama-server.sh").read_text(encoding="utf-8")
