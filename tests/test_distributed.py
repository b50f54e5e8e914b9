"""Distributed tagging: round-robin sharding, shard merging, and a real 2-process torchrun
run (gloo, CPU) whose merged output equals the single-process output line for line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nertron.engine.distributed import distributed_env, merge_shards, shard_path
from nertron.engine.tagger import Tagger, read_lines
from test_tagger import make_model_dir


def test_distributed_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_env() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_env() is None  # one process: the plain path
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_env() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 with WORLD_SIZE=4"):
        distributed_env()
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="bad torchrun environment"):
        distributed_env()


def test_read_lines_shards_and_locates_bad_bytes(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"zero\r\none\n\nthree\nfour")
    assert list(read_lines(path)) == ["zero", "one", "", "three", "four"]
    assert list(read_lines(path, stride=2, offset=0)) == ["zero", "", "four"]
    assert list(read_lines(path, stride=2, offset=1)) == ["one", "three"]
    path.write_bytes(b"ok\n\xff\xfe bad\nok\n")
    assert list(read_lines(path, stride=2, offset=0)) == ["ok", "ok"]  # other ranks' lines are not decoded
    with pytest.raises(ValueError, match=r"in\.txt: line 2: not valid UTF-8"):
        list(read_lines(path, stride=2, offset=1))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("format", ["jsonl", "conll"])
def test_merge_shards_restores_input_order(tmp_path, world, format):
    records = []
    for i in range(7):
        if format == "jsonl":
            records.append(json.dumps({"text": f"line {i}", "entities": []}) + "\n")
        else:
            records.append("".join(f"w{i}.{k}\tO\n" for k in range(i % 3)) + "\n")  # i % 3 == 0: an empty text
    out = tmp_path / "out"
    shards = [shard_path(out, r, world) for r in range(world)]
    for r, shard in enumerate(shards):
        shard.write_text("".join(records[r::world]), encoding="utf-8")
    assert merge_shards(shards, out, format) == 7
    assert out.read_text(encoding="utf-8") == "".join(records)
    if world > 1:  # a shard from another split: refused
        shards[0].write_text("".join(records[0::world]) + records[0], encoding="utf-8")
        shards[-1].write_text("", encoding="utf-8")
        with pytest.raises(ValueError, match="not one round-robin split"):
            merge_shards(shards, out, format)


def test_torchrun_two_processes_equal_single_process(tmp_path, minilm_dir, conll_dev):
    """``torchrun --nproc_per_node=2 -m nertron tag`` over gloo on CPU. ``--batch-tokens 1``
    puts every text in a batch of its own in both runs, so the floats (scores) are the same
    whichever rank tags a line and the outputs can be compared byte for byte."""
    model = tmp_path / "model"
    make_model_dir(model, minilm_dir, conll_dev)
    lines = [" ".join(words) for words, _ in conll_dev[100:119]] + [""]  # 20 lines, one empty
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "nertron", "tag", "--model", str(model), "--device", "cpu", "--batch-tokens", "1",
               "--input", str(source), "--output", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"tagged 20 lines of {source}" in run.stderr
    assert not list(tmp_path.glob(".out.jsonl.shard-*"))  # shards removed after the merge

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = tmp_path / "reference.jsonl"
        Tagger.load(model, device="cpu", batch_tokens=1).tag_file(source, reference)
    finally:
        torch.set_num_threads(threads)
    got = out.read_text(encoding="utf-8").splitlines()
    want = reference.read_text(encoding="utf-8").splitlines()
    assert len(got) == 20 and got == want
    assert [json.loads(line)["text"] for line in got] == lines
    assert sum(len(json.loads(line)["entities"]) for line in got) > 0


def test_distributed_checks_paths_before_starting(tmp_path, monkeypatch):
    """Refused on every rank before the process group or the model: no rendezvous needed."""
    from nertron.engine.distributed import tag_file_distributed

    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    source = tmp_path / "in.txt"
    source.write_text("EU rejects German call .\n", encoding="utf-8")
    os.link(source, tmp_path / "hard.txt")
    for output in (source, tmp_path / "hard.txt"):
        with pytest.raises(ValueError, match="is the input file"):
            tag_file_distributed(source, output, device="cpu")
    with pytest.raises(ValueError, match="standard input"):
        tag_file_distributed("-", tmp_path / "out.jsonl", device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        tag_file_distributed(source, tmp_path / "out.jsonl", device="tpu")
    assert source.read_text(encoding="utf-8") == "EU rejects German call .\n"


def test_torchrun_failing_rank_leaves_no_shards(tmp_path, minilm_dir, conll_dev):
    """Line 2 (rank 1's share) is not UTF-8: both ranks stop with an error, the old output
    stays, and no shard or temporary file is left beside it."""
    model = tmp_path / "model"
    make_model_dir(model, minilm_dir, conll_dev)
    work = tmp_path / "work"
    work.mkdir()
    source = work / "in.txt"
    source.write_bytes(b"EU rejects German call .\ncaf\xe9\n" + b"Peter Blackburn\n" * 6)
    out = work / "out.jsonl"
    out.write_text("old\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "nertron", "tag", "--model", str(model), "--device", "cpu",
               "--input", str(source), "--output", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "nertron tag: error:" in run.stderr and "in.txt: line 2: not valid UTF-8" in run.stderr, run.stderr[-3000:]
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in work.iterdir()) == ["in.txt", "out.jsonl"]
