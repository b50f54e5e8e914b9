"""Tag schemes: a re-export of :mod:`nertron.tags`, where the rules live (kept so that existing
``nertron.engine.data.schemes`` imports keep working; new code imports ``nertron.tags``)."""
from nertron.tags import (CONLL_PREFIXES, SCHEME_NAMES, SCHEMES, STRICT_SCHEMES, Span, TagError, bioes_to_iob2,
                          conll_spans, convert, detect_scheme, end_of_chunk, from_spans, iob1_to_iob2, iob2_to_bioes,
                          iob2_to_iob1, is_valid, normalize_scheme, normalize_strict_scheme, scheme_prefixes, spans,
                          split_tag, start_of_chunk, strict_spans, validate)

# Old private names, kept for nertron/engine/tagger.py, which called them (it now imports
# start_of_chunk/end_of_chunk from nertron.tags: no caller is left, so these may go).
_start_of_chunk = start_of_chunk
_end_of_chunk = end_of_chunk

__all__ = [
    "CONLL_PREFIXES", "SCHEME_NAMES", "SCHEMES", "STRICT_SCHEMES", "Span", "TagError", "bioes_to_iob2", "conll_spans",
    "convert", "detect_scheme", "end_of_chunk", "from_spans", "iob1_to_iob2", "iob2_to_bioes", "iob2_to_iob1",
    "is_valid", "normalize_scheme", "normalize_strict_scheme", "scheme_prefixes", "spans", "split_tag",
    "start_of_chunk", "strict_spans", "validate",
]
