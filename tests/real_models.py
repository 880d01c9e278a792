"""Models of real shape with real tokenizers, built offline: random weights, the config of a popular model
cut to a few layers, and the tokenizer of llama.cpp's vocab-only GGUFs (shipped in the llama-cpp-python
sdist, extracted by `make venv` into .venv/llama.cpp/models).

- qwen2:  Qwen2.5-0.5B: hidden 896 (not a multiple of 256), FFN 4864, 14 query / 2 KV heads, tied
          embeddings, the Qwen2 byte-level BPE tokenizer (151,936 entries) and its ChatML template.
- llama3: Llama-3 shape cut narrow (hidden 256, GQA 4/2, untied) with the Llama-3 BPE tokenizer
          (128,256 entries), which adds <|begin_of_text|> as the real one does.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

VOCAB_DIR = Path(__file__).resolve().parent.parent / ".venv" / "llama.cpp" / "models"
VOCABS = {"qwen2": "ggml-vocab-qwen2.gguf", "llama3": "ggml-vocab-llama-bpe.gguf"}
LLAMA3_BOS = "<|begin_of_text|>"
# Llama 3's own post-processor: byte-level, then BOS before every sequence.
_LLAMA3_POST = {
    "type": "Sequence",
    "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": LLAMA3_BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": LLAMA3_BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": LLAMA3_BOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {LLAMA3_BOS: {"id": LLAMA3_BOS, "ids": [128000], "tokens": [LLAMA3_BOS]}},
        },
    ],
}


def save_tokenizer(kind: str, out: Path) -> Path:
    """The real tokenizer of ``kind`` from llama.cpp's vocab GGUF, saved as tokenizer.json (+ template).

    transformers' GGUF loader adds one token the real Llama 3 tokenizer lacks (<|endoftext|> at 128256)
    and drops its BOS post-processor; both are put back as the published tokenizer.json has them.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(VOCAB_DIR, gguf_file=VOCABS[kind])
    tok.save_pretrained(out)
    if kind == "llama3":
        j = json.loads((out / "tokenizer.json").read_text())
        j["added_tokens"] = [t for t in j["added_tokens"] if t["id"] < 128256]
        j["post_processor"] = _LLAMA3_POST
        (out / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False))
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        cfg.update(add_bos_token=True, add_eos_token=False)
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def drop_weights(d: Path) -> None:
    """A test is done with a real-shaped model: its weights go (about 3 GB for a Qwen2-shaped workflow
    run, whose 150 k-entry embedding every GGUF and safetensors file carries), its logs and results stay
    for a failure's post-mortem. The suite's peak disk use is then one such model at a time."""
    for f in [*d.rglob("*.gguf"), *d.rglob("*.safetensors")]:
        f.unlink()


def build(kind: str, tokenizer_dir: Path, out: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight model of ``kind``'s real shape, saved with its tokenizer like a downloaded one."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if kind == "qwen2":
        cfg = Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643,
        )
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=128256, hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
            eos_token_id=128001,
        )
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a larger scale than the 0.02 init, so logits (and quantization error) are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, out / f.name)
    return out


# Llama-2-7B's shapes (config.json of meta-llama/Llama-2-7b-hf)
LLAMA7B = dict(vocab=32000, hidden=4096, ffn=11008, layers=32)


def sparse_model(out: Path, tokenizer_dir: Path, dtype: str = "BF16", **shape) -> Path:
    """A 7B-shaped HF directory whose weights are a sparse file: real headers, sizes and offsets, no data.

    Every check that reads headers sees a 7B model; nothing in a passing test loads it.
    """
    s = {**LLAMA7B, **shape}
    h, f, v = s["hidden"], s["ffn"], s["vocab"]
    shapes = {"model.embed_tokens.weight": [v, h], "lm_head.weight": [v, h], "model.norm.weight": [h]}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        for k in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{k}.weight"] = [h, h]
        shapes |= {
            p + "mlp.gate_proj.weight": [f, h],
            p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f],
        }
        shapes |= {p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h]}
    size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = size
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    out.mkdir(parents=True)
    with open(out / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        fh.truncate(8 + len(blob) + offset)  # a hole: no disk space, no memory
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v, "hidden_size": h,
           "intermediate_size": f, "num_hidden_layers": s["layers"], "num_attention_heads": 32,
           "num_key_value_heads": 32, "tie_word_embeddings": False,
           "dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype]}
    (out / "config.json").write_text(json.dumps(cfg))
    for t in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (tokenizer_dir / t).exists():
            shutil.copy(tokenizer_dir / t, out / t)
    return out
