"""Tag schemes: a re-export of :mod:`nertron.tags`, where the rules live (kept so that existing
``nertron.engine.data.schemes`` imports keep working; new code imports ``nertron.tags``)."""
from nertron.tags import (CONLL_PREFIXES, SCHEMES, STRICT_SCHEMES, Span, TagError, bioes_to_iob2, conll_spans,
                          convert, end_of_chunk, from_spans, iob1_to_iob2, iob2_to_bioes, iob2_to_iob1,
                          normalize_scheme, normalize_strict_scheme, spans, split_tag, start_of_chunk, strict_spans)

# Old private names, kept for nertron/engine/tagger.py, which called them (it now imports
# start_of_chunk/end_of_chunk from nertron.tags: no caller is left, so these may go).
_start_of_chunk = start_of_chunk
_end_of_chunk = end_of_chunk

__all__ = [
    "CONLL_PREFIXES", "SCHEMES", "STRICT_SCHEMES", "Span", "TagError", "bioes_to_iob2", "conll_spans", "convert",
    "end_of_chunk", "from_spans", "iob1_to_iob2", "iob2_to_bioes", "iob2_to_iob1", "normalize_scheme",
    "normalize_strict_scheme", "spans", "split_tag", "start_of_chunk", "strict_spans",
]
