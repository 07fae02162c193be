"""Data loading and normalisation: every instruction/preference shape, the real shared files, bad records, packing."""

import json
import os
import re
from pathlib import Path

import datasets
import pytest
from conftest import REPO, SHARED, TEXT, flags, needs_shared

from hf_instruct.cli import main
from hf_instruct.data import (
    BadRecordError,
    load_instruction_dataset,
    load_preference_dataset,
    load_text_dataset,
    pack_texts,
    parse_hh_transcript,
    to_messages,
    to_preference,
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- instruction shapes


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"instruction": "Add.", "input": "2 2", "output": "4"}, [user("Add.\n\n2 2"), assistant("4")]),
        ({"instruction": "Hi?", "input": "", "output": "Hello"}, [user("Hi?"), assistant("Hello")]),
        ({"instruction": "Hi?", "output": "Hello"}, [user("Hi?"), assistant("Hello")]),
        ({"instruction": "Sum", "context": "1 2", "response": "3"}, [user("Sum\n\n1 2"), assistant("3")]),
        ({"prompt": "Q", "completion": "A"}, [user("Q"), assistant("A")]),
        ({"prompt": [user("Q")], "completion": [assistant("A")]}, [user("Q"), assistant("A")]),
        ({"messages": [user("Q"), assistant("A")]}, [user("Q"), assistant("A")]),
        (
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "Q"},
                    {"from": "gpt", "value": "A"},
                ]
            },  # noqa: E501
            [{"role": "system", "content": "S"}, user("Q"), assistant("A")],
        ),
        (
            {"system": "Be brief.", "instruction": "Hi?", "output": "Hello"},
            [{"role": "system", "content": "Be brief."}, user("Hi?"), assistant("Hello")],
        ),
    ],
    ids=[
        "alpaca",
        "alpaca-empty-input",
        "alpaca-no-input",
        "dolly",
        "prompt-completion",
        "conversational-pc",
        "messages",
        "sharegpt",
        "system-field",
    ],
)
def test_every_instruction_shape_becomes_messages(record, expected):
    assert to_messages(record) == expected


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "Hi?", "input": ""}, "no known instruction format"),
        ({"instruction": "  ", "output": "x"}, "field 'instruction' is empty"),
        ({"instruction": "Hi?", "output": ""}, "field 'output' is empty"),
        ({"instruction": "Hi?", "output": 42}, "field 'output' must be a string, got int"),
        ({"messages": [user("Q")]}, "no assistant turn"),
        ({"messages": [user("Q"), {"role": "bot", "content": "A"}]}, r"messages\[1\].role is 'bot'"),
        ({"messages": [user("Q"), assistant("")]}, r"messages\[1\]: field 'content' is empty"),
        ({"messages": "Q"}, "must be a non-empty list"),
    ],
)
def test_bad_instruction_records_name_the_field(record, message):
    with pytest.raises(BadRecordError, match=message):
        to_messages(record)


# ---------------------------------------------------------------- preference shapes

HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a secret\n\nAssistant:"
HH_MESSAGES = [user("Hi"), assistant("Hello!"), user("Tell me a secret")]


def test_hh_transcript_is_split_into_turns():
    assert parse_hh_transcript(HH_PROMPT) == HH_MESSAGES


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": HH_PROMPT, "chosen": " No.", "rejected": " Sure, here it is."},
        {"chosen": HH_PROMPT + " No.", "rejected": HH_PROMPT + " Sure, here it is."},
        {"prompt": HH_MESSAGES, "chosen": [assistant("No.")], "rejected": [assistant("Sure, here it is.")]},
    ],
    ids=["prompt-strings", "hh-transcripts", "conversational"],
)
def test_every_preference_shape_becomes_one_normal_form(record):
    assert to_preference(record) == {
        "prompt": HH_MESSAGES,
        "chosen": [assistant("No.")],
        "rejected": [assistant("Sure, here it is.")],
    }


def test_plain_string_prompt_becomes_one_user_turn():
    assert to_preference({"prompt": "Q?", "chosen": "A", "rejected": "B"})["prompt"] == [user("Q?")]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "Q", "chosen": "Same", "rejected": " Same "}, "are the same answer"),
        ({"prompt": "Q", "chosen": "A"}, "field 'rejected' is missing"),
        ({"prompt": "Q", "chosen": "", "rejected": "B"}, "field 'chosen' is empty"),
        ({"chosen": HH_PROMPT + " A", "rejected": "\n\nHuman: Other\n\nAssistant: B"}, "differ before their last"),
        ({"text": "x"}, "no known preference format"),
    ],
)
def test_bad_preference_records_name_the_problem(record, message):
    with pytest.raises(BadRecordError, match=message):
        to_preference(record)


# ---------------------------------------------------------------- the real shared files


@needs_shared
@pytest.mark.parametrize(
    ("name", "count"), [("dolly_open_qa", 3742), ("self_instruct_seed_tasks", 174), ("gsm8k_train", 7473)]
)
def test_real_instruction_files_load_completely(name, count):
    path = SHARED / "sft" / f"{name}.jsonl"
    data = load_instruction_dataset(path)
    assert len(data) == count
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    prompt = first["instruction"].strip() + (f"\n\n{first['input'].strip()}" if first["input"].strip() else "")
    assert data[0]["messages"] == [user(prompt), assistant(first["output"])]


@needs_shared
def test_real_hh_rlhf_file_loads_completely_and_both_shapes_agree():
    path = SHARED / "preference" / "hh_rlhf_harmless_base_test.jsonl"
    data = load_preference_dataset(path)
    assert len(data) == 2303
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:50]]
    as_transcripts = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in raw]
    assert [to_preference(r) for r in as_transcripts] == data.select(range(50)).to_list()
    assert all(row["prompt"][-1]["role"] == "user" for row in data.select(range(200)))


# ---------------------------------------------------------------- bad records in files: error or skip-and-count


@pytest.fixture
def messy_file(tmp_path) -> Path:
    path = tmp_path / "messy.jsonl"
    good = {"instruction": "Hi?", "input": "", "output": "Hello"}
    lines = [
        json.dumps(good).encode(),
        json.dumps({"instruction": "Hi?", "input": "", "output": ""}).encode(),  # line 2: empty output
        b'{"instruction": "caf\xe9", "input": "", "output": "x"}',  # line 3: Latin-1, not UTF-8
        b"{not json",  # line 4
        b"",  # blank lines are not records
        json.dumps(good).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_bad_record_stops_the_run_naming_file_line_and_field(messy_file):
    with pytest.raises(BadRecordError) as error:
        load_instruction_dataset(messy_file)
    assert f"{messy_file}, line 2: field 'output' is empty" in str(error.value)
    assert "on_bad_record='skip'" in str(error.value)


def test_skipping_bad_records_counts_them_in_a_warning(messy_file):
    with pytest.warns(UserWarning) as record:
        data = load_instruction_dataset(messy_file, on_bad_record="skip")
    assert len(data) == 2
    text = str(record[0].message)
    assert "Skipped 3 bad records of 5" in text
    assert "1 x not valid UTF-8" in text and "1 x field 'output' is empty" in text and "1 x not valid JSON" in text
    assert f"First: {messy_file}, line 2" in text


def test_non_utf8_error_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(BadRecordError, match=r"latin1.jsonl, line 1: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_preference_dataset(path)


def test_folders_globs_json_arrays_and_parquet(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q1", "completion": "A1"}])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps([{"prompt": "Q2", "completion": "A2"}]))
    datasets.Dataset.from_list([{"prompt": "Q3", "completion": "A3"}]).to_parquet(tmp_path / "c.parquet")
    assert len(load_instruction_dataset(tmp_path)) == 3
    assert len(load_instruction_dataset(str(tmp_path / "*.jsonl"))) == 1
    assert load_instruction_dataset(tmp_path / "c.parquet")[0]["messages"] == [user("Q3"), assistant("A3")]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_instruction_dataset(tmp_path / "missing.jsonl")


def test_a_dataset_object_is_accepted():
    rows = datasets.Dataset.from_list([{"instruction": "Hi?", "output": "Hello"}])
    assert load_instruction_dataset(rows)[0]["messages"] == [user("Hi?"), assistant("Hello")]


# ---------------------------------------------------------------- raw text and packing


@pytest.fixture
def text_folder(tmp_path) -> Path:
    (tmp_path / "one.txt").write_text("alpha beta\ngamma\n", encoding="utf-8")
    (tmp_path / "two.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


def test_a_txt_file_is_one_document(text_folder):
    texts = load_text_dataset(text_folder)
    assert sorted(texts["text"]) == sorted(["alpha beta\ngamma\n", TEXT])


def test_text_from_jsonl_with_another_field(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", [{"body": "first"}, {"body": "second"}])
    assert load_text_dataset(tmp_path / "docs.jsonl", text_field="body")["text"] == ["first", "second"]
    with pytest.raises(ValueError, match="no 'text' column"):
        load_text_dataset(tmp_path / "docs.jsonl")


def test_packing_puts_eos_between_documents_and_fills_exact_blocks(tokenizer):
    docs = datasets.Dataset.from_dict({"text": ["alpha beta", "gamma", TEXT]})
    stream = []
    for doc in docs["text"]:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    remainder = len(stream) % 16
    assert remainder
    with pytest.warns(UserWarning, match=f"the last {remainder} tokens do not fill a 16-token block"):
        blocks = pack_texts(docs, tokenizer, block_size=16)
    assert blocks["input_ids"] == [stream[i : i + 16] for i in range(0, len(stream) - remainder, 16)]


def test_streaming_packs_the_same_blocks(text_folder, tokenizer):
    packed = pack_texts(load_text_dataset(text_folder), tokenizer, block_size=8)
    streamed = pack_texts(load_text_dataset(text_folder, streaming=True), tokenizer, block_size=8)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [row["input_ids"] for row in streamed] == packed["input_ids"]


@needs_shared
def test_real_pretraining_text_packs(tokenizer):
    texts = load_text_dataset(SHARED / "pretrain" / "tinyshakespeare.txt")
    assert len(texts) == 1 and texts[0]["text"].startswith("First Citizen:")
    blocks = pack_texts(texts.map(lambda r: {"text": r["text"][:20000]}), tokenizer, block_size=128)
    assert len(blocks) > 10 and all(len(ids) == 128 for ids in blocks["input_ids"])
    assert os.path.getsize(SHARED / "pretrain" / "tinyshakespeare.txt") == 1115394


def test_a_streamed_txt_corpus_knows_its_text_column(tmp_path):
    (tmp_path / "new.txt").write_text("never loaded before", encoding="utf-8")  # no cached non-streamed copy
    texts = load_text_dataset(tmp_path / "new.txt", streaming=True)
    assert texts.column_names == ["text"] and [row["text"] for row in texts] == ["never loaded before"]


# ---------------------------------------------------------------- errors a user can act on: one line, file and fix

BAD_FILES = {
    "latin1.txt": b"line one\nline two\ncaf\xe9 au lait\n",
    "truncated.jsonl": b'{"prompt": "Q", "completion": "A"}\n{"prompt": "Q",\n',
    "comma.jsonl": b'{"prompt": "Q", "completion": "A"}\n{"prompt": "Q" "completion": "A"}\n',
    "array.json": b'[{"prompt": "Q", "completion": "A"},\n {"prompt": "Q" "completion": "A"}]\n',
    "short.txt": b"hello world\n",
    "medium.txt": b"the quick brown fox jumps over the lazy dog " * 20,
    "empty/notes.md": b"not data",
}


@pytest.fixture
def bad_files(tmp_path, monkeypatch) -> Path:
    for name, content in BAD_FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)  # file names in the messages are as given, relative
    return tmp_path


@pytest.mark.parametrize(
    ("load", "source", "message"),
    [
        pytest.param(
            load_text_dataset,
            ["empty"],
            "empty: no .txt/.jsonl/.json/.parquet files in that folder.",
            id="empty-folder",
        ),
        pytest.param(  # in a list (what --train_files gives) a typo is no Hub dataset name
            load_text_dataset, ["corpsu"], "corpsu: no such file or folder.", id="mistyped-folder"
        ),
        pytest.param(
            load_instruction_dataset,
            ["empty/"],
            "empty/: no .jsonl/.json/.parquet files in that folder.",
            id="no-records",
        ),
        pytest.param(
            load_text_dataset,
            "latin1.txt",
            "latin1.txt, line 3: not valid UTF-8 (byte 0xe9 at column 4): re-encode the file as UTF-8.",
            id="txt-not-utf8",
        ),
        pytest.param(
            load_text_dataset,
            "comma.jsonl",
            "comma.jsonl, line 2: not valid JSON (Expecting ',' delimiter at column 16).",
            id="jsonl-text-not-json",
        ),
        pytest.param(
            load_instruction_dataset,
            "truncated.jsonl",
            "truncated.jsonl, line 2: not valid JSON (Expecting property name enclosed in double quotes at column 16, "
            "the end of the line: a JSON Lines record must fit on one line). Fix the record, or pass "
            "on_bad_record='skip' to skip bad records.",
            id="jsonl-line-ends-early",
        ),
        pytest.param(
            load_instruction_dataset,
            "array.json",
            "array.json, line 2: not valid JSON (Expecting ',' delimiter at column 17).",
            id="json-array-broken",
        ),
    ],
)
def test_bad_data_files_are_named_with_line_column_and_fix(bad_files, load, source, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        load(source)
    assert str(error.value) == message


TINY_PRETRAIN = [
    "pretrain",
    *flags(config=REPO / "recipes/tiny/pretrain/config.yaml", output_dir="out", report_to="none", bf16="false"),
]
STREAMING = ["--streaming", "true", "--max_steps", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--train_files", "short.txt"],
            "--train_files short.txt: {n} tokens, fewer than one block of 128 (block_size): add text or lower "
            "--block_size.",
            id="too-short",
        ),
        pytest.param(
            ["--train_files", "short.txt", *STREAMING],
            "--train_files short.txt: {n} tokens, fewer than one block of 128 (block_size): add text or lower "
            "--block_size.",
            id="too-short-streamed",
        ),
        pytest.param(
            ["--train_files", "medium.txt", "--block_size", "16"],
            "--train_files medium.txt: {n} blocks of 16 tokens, not more than the 32 held out for evaluation "
            "(eval_blocks): lower --eval_blocks or add text.",
            id="fewer-blocks-than-eval",
        ),
        pytest.param(
            ["--train_files", "medium.txt", "--block_size", "16", *STREAMING],
            "--train_files medium.txt: {n} blocks of 16 tokens, not more than the 32 held out for evaluation "
            "(eval_blocks): lower --eval_blocks or add text.",
            id="fewer-blocks-than-eval-streamed",
        ),
        pytest.param(
            ["--train_files", "empty"], "empty: no .txt/.jsonl/.json/.parquet files in that folder.", id="empty-folder"
        ),
        pytest.param(
            ["--train_files", "latin1.txt"],
            "latin1.txt, line 3: not valid UTF-8 (byte 0xe9 at column 4): re-encode the file as UTF-8.",
            id="txt-not-utf8",
        ),
    ],
)
def test_pretrain_on_too_little_or_bad_text_says_what_to_change(bad_files, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main([*TINY_PRETRAIN, *args])
    assert exit.value.code == 1
    expected = re.escape(f"hf-instruct pretrain: {message}").replace(re.escape("{n}"), r"\d+")
    assert re.search(f"^{expected}$", capsys.readouterr().err, re.MULTILINE)


def test_evaluate_skips_bad_records_when_asked(messy_file, tiny_model_dir, tmp_path, capsys):
    evaluate = ["evaluate", str(tiny_model_dir), "--data", str(messy_file), "--max_new_tokens", "2"]
    with pytest.raises(SystemExit):
        main(evaluate)
    assert "messy.jsonl, line 2: field 'output' is empty" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="Skipped 3 bad records of 5"):
        assert main([*evaluate, "--on_bad_record", "skip", "--output_dir", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["splits"]["messy"]["examples"] == 2
