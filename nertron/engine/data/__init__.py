"""Data: corpus readers, tag schemes and the label vocabulary (``loader`` batches them)."""
from nertron.engine.data.readers import (FACTRUEVAL_TYPES, FORMATS, DataFormatError, Dataset, Sentence,
                                         detect_format, read_atis, read_conll, read_csv, read_dataset,
                                         read_factrueval)
from nertron.engine.data.vocab import IGNORE_INDEX, IGNORE_LABEL, PAD, LabelVocab, UnknownLabelError
from nertron.tags import (SCHEMES, STRICT_SCHEMES, TagError, bioes_to_iob2, convert, from_spans, iob1_to_iob2,
                          iob2_to_bioes, iob2_to_iob1, normalize_scheme, spans, strict_spans)

__all__ = [
    "Sentence", "DataFormatError", "Dataset", "read_conll", "read_atis", "read_factrueval", "read_csv",
    "read_dataset", "detect_format", "FORMATS", "FACTRUEVAL_TYPES",
    "SCHEMES", "STRICT_SCHEMES", "TagError", "normalize_scheme", "spans", "strict_spans", "from_spans",
    "convert", "iob1_to_iob2", "iob2_to_iob1", "iob2_to_bioes", "bioes_to_iob2",
    "LabelVocab", "UnknownLabelError", "PAD", "IGNORE_LABEL", "IGNORE_INDEX",
]
