"""The host pipeline's C loops (nertron.kernels.text_cpu) against the Python paths they
replace: the word split (``tokenizer._split_shadow``: ``_WORD_PATTERN`` by ``re.split``) and
the casing features (``casing.word_casing``'s NumPy path); and the fallback without them."""
import itertools
import random
import warnings

import numpy as np
import pytest

from nertron.engine import casing, tokenizer as tokenizer_module
from nertron.kernels import cbuild, text_cpu
from test_batching import random_texts

pytestmark = pytest.mark.skipif(not text_cpu.available(), reason="no C compiler: the Python paths run (tested)")

# every class the split tells apart (see tokenizer._CharClasses)
CLASSES = " az0s-.,:/'!"


def python_split(shadow: str) -> list[tuple[int, int]]:
    starts, ends = tokenizer_module._split_shadow(shadow)
    return list(zip(starts.tolist(), ends.tolist()))


def c_split(shadow: str) -> list[tuple[int, int]]:
    starts, ends = text_cpu.split_words(shadow.encode("ascii"))
    return list(zip(starts.tolist(), ends.tolist()))


def test_split_equals_the_pattern_on_every_short_string():
    """Every string of up to 5 classes (271,452 of them), and the empty one."""
    for size in range(6):
        for chars in itertools.product(CLASSES, repeat=size):
            shadow = "".join(chars)
            assert c_split(shadow) == python_split(shadow), repr(shadow)


def test_split_equals_the_pattern_on_long_random_strings():
    rng = random.Random(0)
    pieces = ["a.s.", "s.a.s.", "'s", "'sa", "0.0", "00,000", "0:0", "0/0", "a-a", "a'a", "zz", "z", "a.s", "0."]
    for _ in range(3000):
        shadow = "".join(rng.choice(CLASSES) if rng.random() < 0.7 else rng.choice(pieces)
                         for _ in range(rng.randint(1, 80)))
        assert c_split(shadow) == python_split(shadow), repr(shadow)


def test_split_text_is_the_same_with_and_without_c(monkeypatch, minilm_dir):
    """Whole texts of every awkward character class (zero-width, control, CJK, ...), split
    through the character classes by C and by the regular expression."""
    texts = random_texts(2000, seed=5) + ["U.S. troops' O'Neill's 1996-08-22 3.5 Jean-Pierre", ""]
    joined = "\n".join(texts)
    base = np.zeros(len(texts), np.int64)
    np.cumsum([len(t) + 1 for t in texts[:-1]], out=base[1:])
    with_c = tokenizer_module._split_words(joined, base)
    monkeypatch.setattr(text_cpu, "available", lambda: False)
    without = tokenizer_module._split_words(joined, base)
    assert all((a == b).all() for a, b in zip(with_c, without))
    assert len(with_c[0]) > 10_000


def test_word_casing_is_the_same_with_and_without_c(monkeypatch, minilm_dir):
    tok = tokenizer_module.WordPieceTokenizer.from_pretrained(minilm_dir)
    texts = random_texts(1500, seed=9) + ["Apple US iPhone F16 1996 3.5 , -- $ 中文 McDonald É ÉCOLE a"]
    encoded = tok.encode_texts(texts)
    with_c = casing.word_casing(texts, encoded.word_chars, encoded.word_item)
    monkeypatch.setattr(text_cpu, "available", lambda: False)
    without = casing.word_casing(texts, encoded.word_chars, encoded.word_item)
    for a, b in zip(with_c, without):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    # every shape occurs, so each branch of the C shape test was compared
    assert len(np.unique(with_c.shape)) == len(casing.SHAPES)


def test_word_casing_checks_its_bounds():
    with pytest.raises(ValueError, match="outside"):
        text_cpu.word_casing(b"\x00\x01", np.array([65, 66], np.uint32), np.array([1]), np.array([2]), 4, 2048,
                             casing._C_SHAPE_CODES)
    with pytest.raises(ValueError, match="classes for"):
        text_cpu.word_casing(b"\x00", np.array([65, 66], np.uint32), np.array([0]), np.array([1]), 4, 2048,
                             casing._C_SHAPE_CODES)


def test_without_a_compiler_the_library_is_none_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("NERTRON_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    library = cbuild.Library("probe", "int f(void) { return 1; }", fallback="the probe's Python runs")
    with pytest.warns(UserWarning, match="the probe's Python runs"):
        assert library.get() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert library.get() is None
    monkeypatch.setenv("NERTRON_CPU_KERNELS", "0")
    monkeypatch.delenv("CC")
    off = cbuild.Library("probe", "int f(void) { return 1; }")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # turned off on purpose: no warning
        assert off.get() is None


def test_library_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NERTRON_CACHE", str(tmp_path))
    library = cbuild.Library("probe", "int f(void) { return 7; }")
    assert library.get().f() == 7
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("probe_") and built[0].endswith(".so")
    assert cbuild.Library("probe", "int f(void) { return 7; }").get().f() == 7  # loaded, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == built
