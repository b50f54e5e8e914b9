"""The command line: instant --help (lazy imports), `nertron train` and `nertron eval` on real
CoNLL-2003 / ATIS slices, and their errors."""
import json
import subprocess
import sys

import pytest

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
    assert "the test set has labels the training set never shows" in err and "unseen_labels='score'" in err
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
