"""The command line: instant --help (lazy imports), `nertron train` and `nertron eval` on real
CoNLL-2003 / ATIS slices, and their errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nertron.engine.cli import main


def _slice(src, dst, sentences, skip=0):
    """The first ``sentences`` blank-line-separated blocks of a real file (after ``skip``)."""
    blocks = src.read_text(encoding="utf-8").split("\n\n")
    dst.write_text("\n\n".join(blocks[skip : skip + sentences]) + "\n", encoding="utf-8")
    return dst


def test_help_imports_no_torch():
    code = "import sys, nertron.engine.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "nertron.engine.cli", "train", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--valid-fraction" in result.stdout and "--unseen-labels" in result.stdout


def test_train_then_eval_on_conll(data_dir, minilm_dir, tmp_path, capsys):
    train = _slice(data_dir / "conll2003" / "eng.train", tmp_path / "train.txt", 160)
    test = _slice(data_dir / "conll2003" / "eng.testb", tmp_path / "test.txt", 40)
    out = tmp_path / "model"
    rc = main(["train", "--train", str(train), "--valid-fraction", "0.25", "--test", str(test), "--format", "conll",
               "--output", str(out), "--model", "BertBiLSTMCRF", "--epochs", "2", "--enc-hidden-dim", "32",
               "--checkpoint", str(minilm_dir), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best model on valid (last 25% of" in printed and "best model on test" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"valid", "test"} and 0.0 <= results["test"]["span_f1"] <= 1.0
    # the labels live in model.json only (no labels.json since NerModel.save writes each piece once)
    assert sorted(p.name for p in out.iterdir()) == ["head.safetensors", "model.json", "results.json",
                                                     "train_log.jsonl", "trainer_state.pt"]
    assert main(["eval", "--model", str(out), "--data", str(test), "--format", "conll"]) == 0
    table = capsys.readouterr().out
    assert "PER" in table and f"{results['test']['span_f1']:.4f}"[:5] in table
    # the same data written in BIOES reads to the same gold spans: detected, or named with --data-scheme
    bioes = tmp_path / "test.bioes"
    bioes.write_text(_convert_conll(test.read_text(encoding="utf-8"), "IOB1", "BIOES"), encoding="utf-8")
    for extra in ([], ["--data-scheme", "iobes"]):
        assert main(["eval", "--model", str(out), "--data", str(bioes), "--format", "conll"] + extra) == 0
        assert capsys.readouterr().out.split("\n")[1:] == table.split("\n")[1:]  # the title names the file
    assert main(["eval", "--model", str(out), "--data", str(bioes), "--format", "conll", "--data-scheme", "IOB1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nertron eval: error: ") and "test.bioes:" in err and "IOB1" in err


def _convert_conll(text, source, target):
    """CoNLL columns with the last column converted from ``source`` to ``target`` scheme."""
    from nertron.tags import convert

    out, block = [], []

    def flush():
        if block:
            tags = convert([fields[-1] for fields in block], source, target)
            out.extend(" ".join(fields[:-1] + [tag]) for fields, tag in zip(block, tags))
            block.clear()

    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            flush()
            out.append(line)
        else:
            block.append(fields)
    flush()
    return "\n".join(out) + "\n"


def test_train_errors(data_dir, minilm_dir, tmp_path, capsys):
    atis = data_dir / "atis"
    train = tmp_path / "train.iob"
    train.write_text("".join((atis / "atis-2.train.w-intent.iob").read_text().splitlines(keepends=True)[:150]))
    args = ["train", "--train", str(train), "--test", str(atis / "atis.test.w-intent.iob"), "--format", "atis",
            "--output", str(tmp_path / "m"), "--checkpoint", str(minilm_dir)]
    assert main(args) == 2
    assert "a validation set is needed to pick the best model" in capsys.readouterr().err
    assert main(args + ["--valid-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "the test set has labels the training set never shows" in err and "--unseen-labels score" in err
    assert main(["train", "--train", str(train), "--valid", str(train), "--valid-fraction", "0.2", "--format", "atis",
                 "--output", str(tmp_path / "m"), "--checkpoint", str(minilm_dir)]) == 2
    assert "either a validation file or valid_fraction" in capsys.readouterr().err


def test_unseen_labels_score(data_dir, minilm_dir, tmp_path):
    """ATIS test tags and intents unseen in training are kept as gold and count as misses."""
    from nertron.engine.data.loader import NerData

    atis = data_dir / "atis"
    train = tmp_path / "train.iob"
    train.write_text("".join((atis / "atis-2.train.w-intent.iob").read_text().splitlines(keepends=True)[:150]))
    with pytest.warns(UserWarning, match=r"the test set has labels the training set never shows \(\d+ tokens, \d+ intents\)"):
        data = NerData.create(train, None, minilm_dir, test_path=atis / "atis.test.w-intent.iob", data_format="atis",
                              valid_fraction=0.2, unseen_labels="score")
    unseen = {t for s in data.sentences("test") for t in s.tags} - set(data.vocab.labels)
    assert unseen  # gold tags the model cannot predict stay in the gold data
    ignored = sum(label == -100 for e in data.examples("test") for label in e.labels)
    assert ignored == sum(t in unseen for s in data.sentences("test") for t in s.tags)
    assert len(data.sentences("valid")) == 30 and len(data.sentences("train")) == 120


# --- nertron tag: errors in one line, files never lost ----------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir, conll_dev):
    from test_tagger import make_model_dir

    path = tmp_path_factory.mktemp("cli_model")
    make_model_dir(path, minilm_dir, conll_dev)
    return path


def _one_error_line(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("nertron tag: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_tag_refuses_output_equal_to_input(model_dir, tmp_path, capsys):
    source = tmp_path / "t.txt"
    source.write_text("Peter Blackburn met EU officials .\n", encoding="utf-8")
    os.link(source, tmp_path / "hard.txt")
    (tmp_path / "sym.txt").symlink_to(source)
    for output in (source, tmp_path / "hard.txt", tmp_path / "sym.txt"):
        assert main(["tag", "--model", str(model_dir), "--input", str(source), "--output", str(output)]) == 2
        _one_error_line(capsys, "is the input file")
    assert source.read_text(encoding="utf-8") == "Peter Blackburn met EU officials .\n"


def test_tag_checks_input_before_touching_the_output(model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    run = ["tag", "--model", str(model_dir), "--output", str(out), "--input"]
    assert main(run + [str(tmp_path / "typo.txt")]) == 2
    _one_error_line(capsys, "no input file", "typo.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"EU\n" * 1100 + b"caf\xe9\n")
    assert main(run + [str(bad)]) == 2
    _one_error_line(capsys, "bad.txt: line 1101: not valid UTF-8")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(run + [str(fifo)]) == 2
    _one_error_line(capsys, "is a named pipe")
    assert main(run + [str(tmp_path)]) == 2
    _one_error_line(capsys, "is a directory")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "fifo", "out.jsonl"]


def test_tag_output_directory_and_devices(model_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("EU rejects German call .\n", encoding="utf-8")
    assert main(["tag", "--model", str(model_dir), "--input", str(source), "--output", str(tmp_path)]) == 2
    _one_error_line(capsys, "is a directory")
    assert main(["tag", "--model", str(model_dir), "--device", "tpu", "x"]) == 2
    _one_error_line(capsys, "unknown device 'tpu'")
    if not torch.cuda.is_available():
        assert main(["tag", "--model", str(model_dir), "--device", "cuda", "x"]) == 2
        _one_error_line(capsys, "needs CUDA, which this machine does not have")


def test_eval_unseen_labels_flag(data_dir, model_dir, tmp_path, capsys):
    """Labels the model never saw: the error names the flag, and the flag scores them as misses."""
    test = _slice(data_dir / "conll2003" / "eng.testb", tmp_path / "test.txt", 30)
    test.write_text(test.read_text(encoding="utf-8").replace("-MISC", "-EVENT"), encoding="utf-8")
    args = ["eval", "--model", str(model_dir), "--data", str(test), "--format", "conll", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "EVENT" in err and "--unseen-labels score" in err and "unseen_labels=" not in err
    with pytest.warns(UserWarning, match="never shows"):
        assert main(args + ["--unseen-labels", "score"]) == 0
    assert "micro" in capsys.readouterr().out


def test_train_refuses_a_directory_holding_a_model(tmp_path, capsys):
    """A non-empty --output is refused before any data is read, unless --resume or --overwrite."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.json").write_text("{}")
    args = ["train", "--train", str(tmp_path / "missing.conll"), "--valid-fraction", "0.2", "--output", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nertron train: error: ") and "already holds a training run" in err
    assert "--resume" in err and "--overwrite" in err and "missing.conll" not in err
    assert main(args + ["--resume", "--overwrite"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 2  # past the check: now the missing training file is the error
    assert "missing.conll" in capsys.readouterr().err
    assert (out / "model.json").read_text() == "{}"
