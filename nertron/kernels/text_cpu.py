"""The host pipeline's per-character loops in C: the word split of ``split_text`` and the
casing features of every word (``casing.word_casing``), over a whole chunk of texts at once.

Why C: the tagger's host work runs Python in one thread while a worker thread runs the
``tokenizers`` call (Rust, without the GIL). Everything that holds the GIL is on that one
thread's critical path, and the two loops here were the largest part of it: a regular
expression over the chunk's character classes (``re.split`` holds the GIL throughout) and
a dozen NumPy passes over every character for the casing counts. Here each is one pass in C,
called through ``ctypes``, which releases the GIL while it runs.

Both work on stand-ins computed in Python by ``str.translate`` (one byte per character):
- ``split_words``: the classes of ``tokenizer._CHAR_CLASSES`` (``' '`` space, ``'a'`` word
  character, ``'s'`` the letter s, ``'0'`` digit, ``'z'`` removed by the normaliser, the
  marks ``- . , : / '`` as themselves, ``'!'`` other punctuation). It implements
  ``tokenizer._WORD_PATTERN`` (the same alternatives, tried in the same order, with the same
  look-arounds) and then trims ``'z'`` from each word's edges, dropping words that were all
  ``'z'``: exactly ``_split_words``'s Python path, checked against it in ``tests/test_text_cpu.py``.
- ``word_casing``: the classes of ``casing._CaseClasses`` (0 upper, 1 lower, 2 digit, 3 letter
  without case, 4 punctuation, 5 other) and the code points, for the shape and character ids
  of ``casing.word_casing``'s NumPy path.

Built once with the system C compiler and cached (:mod:`nertron.kernels.cbuild`); with no
compiler, :func:`available` is False and the callers run their Python / NumPy path.
"""
from __future__ import annotations

import ctypes

import numpy as np

from nertron.kernels.cbuild import Library

__all__ = ["available", "split_words", "word_casing"]

_SOURCE = r"""
#include <stdint.h>

static inline int is_run(uint8_t c) { return c == 'a' || c == '0' || c == 's' || c == 'z'; }
static inline int is_letter(uint8_t c) { return c == 'a' || c == '0' || c == 's'; }

/* one word [a, b) of the pattern, its 'z' edges trimmed; kept unless it was all 'z' */
static inline int64_t emit(const uint8_t *c, int64_t a, int64_t b, int64_t m, int64_t *starts, int64_t *ends) {
    while (a < b && c[a] == 'z') ++a;
    while (b > a && c[b - 1] == 'z') --b;
    if (a < b) { starts[m] = a; ends[m] = b; ++m; }
    return m;
}

/* _WORD_PATTERN over classes c[0..n), as re.split scans it: at each position the first
   alternative that matches, else (a space) the next position. Returns the word count. */
int64_t split_words(const uint8_t *c, int64_t n, int64_t *starts, int64_t *ends) {
    int64_t i = 0, m = 0, j, reps;
    while (i < n) {
        uint8_t x = c[i];
        if (x == ' ') { ++i; continue; }
        /* (?<![a0s])z*(?:[as]\.){2,}: a letter abbreviation (U.S.) */
        if (i == 0 || !is_letter(c[i - 1])) {
            j = i;
            while (j < n && c[j] == 'z') ++j;
            reps = 0;
            while (j + 1 < n && (c[j] == 'a' || c[j] == 's') && c[j + 1] == '.') { j += 2; ++reps; }
            if (reps >= 2) { m = emit(c, i, j, m, starts, ends); i = j; continue; }
        }
        /* 's(?![a0sz]): a possessive */
        if (x == '\'' && i + 1 < n && c[i + 1] == 's' && !(i + 2 < n && is_run(c[i + 2]))) {
            m = emit(c, i, i + 2, m, starts, ends); i += 2; continue;
        }
        /* RUN+ (?: (- | '(?!s(?!RUN)) | (?<=0)[.,:/](?=0)) RUN+ )* */
        if (is_run(x)) {
            j = i;
            while (j < n && is_run(c[j])) ++j;
            while (j + 1 < n && is_run(c[j + 1])) {
                uint8_t sep = c[j];
                if (sep == '-') {
                } else if (sep == '\'') {
                    if (c[j + 1] == 's' && !(j + 2 < n && is_run(c[j + 2]))) break;
                } else if ((sep == '.' || sep == ',' || sep == ':' || sep == '/') && c[j - 1] == '0' && c[j + 1] == '0') {
                } else {
                    break;
                }
                ++j;
                while (j < n && is_run(c[j])) ++j;
            }
            m = emit(c, i, j, m, starts, ends); i = j; continue;
        }
        /* [^ ]: any other character alone */
        m = emit(c, i, i + 1, m, starts, ends); ++i;
    }
    return m;
}

/* casing.word_casing: per word (start, length in the chunk's characters), its shape code
   (codes[8]: alnum, lower, upper, title, mixed, number, other, punct) and its first
   max_chars character ids (1 + code point % (buckets - 1)), 0 after its end */
void word_casing(const uint8_t *cls, const uint32_t *points, const int64_t *start, const int64_t *length,
                 int64_t V, int64_t max_chars, int64_t buckets, const int64_t *codes,
                 int64_t *shape, int64_t *chars) {
    for (int64_t v = 0; v < V; ++v) {
        const uint8_t *c = cls + start[v];
        const uint32_t *p = points + start[v];
        int64_t len = length[v], upper = 0, lower = 0, digit = 0, alpha = 0, punct = 0, k;
        int first_upper = -1;
        for (k = 0; k < len; ++k) {
            switch (c[k]) {
                case 0: ++upper; if (first_upper < 0) first_upper = 1; break;
                case 1: ++lower; if (first_upper < 0) first_upper = 0; break;
                case 2: ++digit; break;
                case 3: ++alpha; break;
                case 4: ++punct; break;
                default: break;
            }
        }
        int64_t cased = upper + lower, s;
        if (cased > 0 && digit > 0) s = codes[0];
        else if (cased > 0 && upper == 0) s = codes[1];
        else if (cased > 1 && lower == 0) s = codes[2];
        else if (cased > 0 && first_upper == 1 && upper == 1) s = codes[3];
        else if (cased > 0) s = codes[4];
        else if (digit > 0) s = codes[5];
        else if (alpha > 0) s = codes[6];
        else if (len > 0 && punct == len) s = codes[7];
        else s = codes[6];
        shape[v] = s;
        int64_t *row = chars + v * max_chars;
        for (k = 0; k < max_chars; ++k) row[k] = k < len ? 1 + (int64_t)(p[k] % (uint32_t)(buckets - 1)) : 0;
    }
}
"""

_LIBRARY = Library("text_cpu", _SOURCE, fallback="the host pipeline runs its Python word split and casing")
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def _lib():
    lib = _LIBRARY.get()
    if lib is not None and not getattr(lib, "_typed", False):
        lib.split_words.restype = _I64
        lib.split_words.argtypes = [_P, _I64, _P, _P]
        lib.word_casing.restype = None
        lib.word_casing.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _P]
        lib._typed = True
    return lib


def available() -> bool:
    """Whether the C library could be built and loaded (built on the first call)."""
    return _lib() is not None


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


def split_words(classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The words of ``classes`` (``_CHAR_CLASSES`` stand-ins, one byte per character):
    ``(V,)`` int64 starts and ends, in order."""
    lib = _lib()
    n = len(classes)
    starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
    count = lib.split_words(classes, n, _ptr(starts), _ptr(ends))
    return starts[:count].copy(), ends[:count].copy()


def word_casing(classes: bytes, points: np.ndarray, start: np.ndarray, length: np.ndarray, max_chars: int,
                buckets: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape codes ``(V,)`` and character ids ``(V, max_chars)`` (int64) of the words
    ``[start, start + length)`` of a chunk: ``classes`` one ``_CaseClasses`` byte per
    character, ``points`` ``(n,)`` uint32 code points, ``codes`` the 8 shape codes in the C
    source's order."""
    lib = _lib()
    if len(classes) != len(points):
        raise ValueError(f"{len(classes)} classes for {len(points)} characters")
    start = np.ascontiguousarray(start, np.int64)
    length = np.ascontiguousarray(length, np.int64)
    if len(start) and (start.min() < 0 or (start + length).max() > len(points) or length.min() < 0):
        raise ValueError("a word lies outside the characters")
    points = np.ascontiguousarray(points, np.uint32)
    codes = np.ascontiguousarray(codes, np.int64)
    V = len(start)
    shape, chars = np.empty(V, np.int64), np.empty((V, max_chars), np.int64)
    lib.word_casing(classes, _ptr(points), _ptr(start), _ptr(length), V, max_chars, buckets, _ptr(codes),
                    _ptr(shape), _ptr(chars))
    return shape, chars
