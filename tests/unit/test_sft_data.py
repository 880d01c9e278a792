"""Fine-tune data is read as text, every row checked up front, and the job trains on what was checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from quantflow.config import _data_file_errors
from quantflow.finetune import load_sft_dataset, train
from quantflow.inputs import InputError, check_data_file
from quantflow.sft_data import SftDataError, read_sft

# Completions a type-inferring reader turns into numbers (or NaN): each must arrive as the exact string.
NUMERIC = [
    ("Question: 17 + 25 =\nAnswer:", " 42"),
    ("Question: 3 - 3 =\nAnswer:", " 0"),
    ("Question: 100 / 8 =\nAnswer:", " 12.5"),
    ("Question: the code of agent seven?\nAnswer:", " 007"),
    ("Question: 2 - 9 =\nAnswer:", " -7"),
    ("Question: is it known?\nAnswer:", "NA"),
    ("Question: 10 to the 3rd?\nAnswer:", " 1e3"),
    ("Question: 6 * 7 =\nAnswer:", "42"),
]

PARAMS = dict(method="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], learning_rate=5e-3,
              steps=2, batch_size=4, max_length=48, warmup_steps=0, seed=5)


def _csv(path: Path, rows, header=("prompt", "completion")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_numeric_csv_completions_stay_text_and_train_a_real_step(tiny_hf, tmp_path):
    from datasets import Value, load_dataset

    data = _csv(tmp_path / "train.csv", NUMERIC)
    # What a type-inferring reader makes of this file, and why trl crashed on it: numbers, not text.
    inferred = load_dataset("csv", data_files=str(data), split="train")
    assert inferred.features["completion"].dtype != "string"
    ds = load_sft_dataset(data)
    assert ds.features == {"prompt": Value("string"), "completion": Value("string")}
    assert [(r["prompt"], r["completion"]) for r in ds] == NUMERIC
    m = train(str(tiny_hf), str(data), str(data), str(tmp_path / "adapter"), PARAMS, threads=2)
    assert m["steps"] == 2 and m["train_loss"] == m["train_loss"] and m["eval_loss"] > 0


def test_parquet_and_jsonl_keep_the_exact_strings(tmp_path):
    import pandas as pd

    rows = [{"prompt": p, "completion": c, "id": i} for i, (p, c) in enumerate(NUMERIC)]
    pd.DataFrame(rows).astype({"prompt": str, "completion": str}).to_parquet(tmp_path / "d.parquet")
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("d.parquet", "d.jsonl", "d.json"):
        ds = load_sft_dataset(tmp_path / name)
        assert ds.column_names == ["prompt", "completion"], name  # other fields are not trained on
        assert [(r["prompt"], r["completion"]) for r in ds] == NUMERIC, name


def test_chat_rows_become_a_messages_list_of_strings(tmp_path):
    chat = [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "17 + 25?"},
        {"role": "assistant", "content": " 42"},
    ]
    ds = load_sft_dataset(_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}] * 2))
    assert ds.column_names == ["messages"] and ds[0]["messages"] == chat
    assert ds.features["messages"].feature["content"].dtype == "string"
    csv_chat = _csv(tmp_path / "chat.csv", [[json.dumps(chat)]], header=["messages"])
    assert load_sft_dataset(csv_chat)[0]["messages"] == chat


GOOD = {"prompt": "Question: 1 + 1 =\nAnswer:", "completion": " 2"}
USER, BOT = {"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}


@pytest.mark.parametrize(
    "row,expect",
    [
        ({"prompt": "Q", "completion": 42}, "row 2: field completion is int 42, not text"),
        ({"prompt": "Q", "completion": ""}, "row 2: field completion is empty"),
        ({"prompt": "  ", "completion": " 2"}, "row 2: field prompt is empty"),
        ({"prompt": None, "completion": " 2"}, "row 2: field prompt is null"),
        ({"prompt": ["Q"], "completion": " 2"}, "row 2: field prompt is list"),
        ({"prompt": "Q"}, "row 2 lacks field(s) completion"),
        ({"messages": [USER, BOT]}, "row 2: the rows before it have prompt and completion, this one not"),
    ],
)
def test_a_bad_prompt_completion_row_is_named_in_one_line(tmp_path, row, expect):
    bad = _jsonl(tmp_path / "train.jsonl", [GOOD, row, GOOD])
    with pytest.raises(SftDataError) as e:
        read_sft(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: ") and expect in msg


@pytest.mark.parametrize(
    "messages,expect",
    [
        ("hello", "field messages is str, not a list"),
        ([], "field messages is an empty list"),
        ([USER, "hi"], "field messages[1] is str"),
        ([USER, {"role": "assistant"}], "field messages[1] lacks content"),
        ([{"role": "bot", "content": "x"}, BOT], "field messages[0].role is 'bot'; use one of system, user"),
        ([USER, {"role": "assistant", "content": 2}], "field messages[1].content is int 2, not text"),
        ([USER, {"role": "assistant", "content": ""}], "field messages[1].content is empty"),
        ([USER, {"role": "user", "content": "more"}], "field messages has no assistant turn"),
    ],
)
def test_a_bad_chat_row_is_named_in_one_line(tmp_path, messages, expect):
    bad = _jsonl(tmp_path / "chat.jsonl", [{"messages": [USER, BOT]}, {"messages": messages}])
    with pytest.raises(SftDataError) as e:
        read_sft(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: row 2: ") and expect in msg


def test_csv_errors_name_the_line(tmp_path):
    # row 1 spans lines 2-3 (a quoted newline), so the bad row 2 is on line 4
    bad = _csv(tmp_path / "t.csv", [["Question: a?\nAnswer:", " b"], ["Question: c?", ""]])
    with pytest.raises(SftDataError, match=rf"^{bad}: line 4: field completion is empty"):
        read_sft(bad)
    short = tmp_path / "short.csv"
    short.write_text("prompt,completion\nQ, 1\nQ2\n")
    with pytest.raises(SftDataError, match=rf"^{short}: line 3: fewer cells than the header"):
        read_sft(short)
    chat = _csv(tmp_path / "chat.csv", [["[{'role': 'user'}]"]], header=["messages"])
    with pytest.raises(SftDataError, match=r"line 2: field messages is not a JSON list"):
        read_sft(chat)
    header = _csv(tmp_path / "h.csv", [["Q", "A"]], header=["question", "completion"])
    with pytest.raises(SftDataError, match=r"the header lacks field\(s\) prompt"):
        read_sft(header)


def test_parquet_with_a_numeric_column_is_refused_naming_the_row(tmp_path):
    import pandas as pd

    p = tmp_path / "d.parquet"
    pd.DataFrame({"prompt": ["Q1", "Q2"], "completion": [42, 7]}).to_parquet(p)
    with pytest.raises(SftDataError, match=rf"^{p}: row 1: field completion is int 42, not text"):
        read_sft(p)


def test_the_config_check_reads_every_row(tmp_path):
    """A bad row far down the file fails the config check, naming the config key, file, row and field."""
    rows = [GOOD] * 1500 + [{"prompt": "Q", "completion": 3}]
    bad = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(InputError, match="row 1501: field completion is int"):
        check_data_file("sft_train", bad)
    (err,) = _data_file_errors("models[1].data.sft_train", "sft_train", bad)
    assert err.startswith(f"config key models[1].data.sft_train: {bad}: row 1501: field completion")
    assert _data_file_errors("models[1].data.sft_train", "sft_train", _csv(tmp_path / "ok.csv", NUMERIC)) == []


def test_unsupported_or_missing_files(tmp_path):
    with pytest.raises(SftDataError, match="unsupported data file type '.txt'"):
        read_sft(tmp_path / "d.txt")
    with pytest.raises(SftDataError, match="data file not found"):
        read_sft(tmp_path / "nope.jsonl")
    (tmp_path / "empty.csv").write_text("prompt,completion\n")
    with pytest.raises(SftDataError, match="no rows"):
        read_sft(tmp_path / "empty.csv")
