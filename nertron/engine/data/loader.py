"""``NerData``: sentences -> WordPiece examples -> length-bucketed batches.

Each sentence is tokenised once (``WordPieceTokenizer.encode_words``); a sentence longer
than the model's positions is split into overlapping windows that never cut a word and is
merged back after prediction (``merge_windows``): nothing is truncated. An example keeps
the sub-token ids, the index of each word's first sub-token (the word-level head reads only
those, so continuation sub-tokens are never labelled, scored or lost) and the word labels.

Batches group examples of similar length under a token budget (padded tokens per batch),
so little compute goes to padding; the order is deterministic for a given seed and epoch.
Encoding, windowing, bucketing, collation and merging are ``nertron.engine.batching``'s,
the path the ``Tagger`` uses too.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from nertron.engine.data.readers import Sentence, read_dataset
from nertron.engine.data.schemes import convert, normalize_scheme
from nertron.engine.data.vocab import IGNORE_LABEL, LabelVocab
from nertron.engine import batching
from nertron.engine.tokenizer import IGNORE_INDEX, WordPieceTokenizer

SPLITS = ("train", "valid", "test")


@dataclass
class Example:
    index: int  # position in its split's example list (cache key)
    sentence_id: int  # the sentence it comes from
    pieces: object  # the tokenizer's WordPieces of the whole sentence
    window: object  # the WordPieces of this window (word_index = its first word's index in the sentence)
    input_ids: list[int]  # sub-token ids without [CLS]/[SEP]
    word_starts: list[int]  # first sub-token of each word, into input_ids
    labels: list[int] | None
    intent: int | None


class IntentVocab:
    """Intent name <-> id for joint models (no padding entry)."""

    def __init__(self, intents: Iterable[str]):
        self.names = sorted(set(intents))
        self.ids = {name: i for i, name in enumerate(self.names)}

    def encode(self, name: str) -> int:
        if name not in self.ids:
            raise KeyError(f"unknown intent {name!r}; known intents: {', '.join(self.names[:20])}"
                           f"{' ...' if len(self.names) > 20 else ''}")
        return self.ids[name]

    def decode(self, index: int) -> str:
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)


class NerData:
    """Train/valid/test sets for a NER model (the seed's ``NerData``).

    Build with ``NerData.create(train_path, valid_path, checkpoint_dir, ...)`` or
    ``NerData.from_sentences(train, valid, tokenizer, ...)``.
    """

    def __init__(
        self,
        tokenizer: WordPieceTokenizer,
        splits: dict[str, list[Sentence]],
        vocab: LabelVocab,
        tag_scheme: str = "IOB2",
        batch_tokens: int = 1024,
        max_batch_size: int = 128,
        seed: int = 0,
        intent_vocab: IntentVocab | None = None,
        unseen_labels: str = "error",
        casing: str = "none",
    ):
        self.tokenizer = tokenizer
        # the casing inputs the model reads (its ``config.casing``; ``NerLearner`` sets it)
        self.casing = casing
        self.unseen_labels = unseen_labels
        self.vocab = vocab
        self.tag_scheme = tag_scheme
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.intent_vocab = intent_vocab
        self._sentences = splits
        self._examples = {name: self.encode(sentences, labelled=True) for name, sentences in splits.items()}

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_sentences(
        cls,
        train: Sequence[Sentence],
        valid: Sequence[Sentence] | None,
        tokenizer: WordPieceTokenizer,
        test: Sequence[Sentence] | None = None,
        source_scheme: str = "IOB2",
        tag_scheme: str = "IOB2",
        vocab: LabelVocab | None = None,
        unseen_labels: str = "error",
        **kwargs,
    ) -> "NerData":
        """In-memory sentences (objects with ``words``, ``tags`` and optional ``intent``).

        ``unseen_labels``: what to do with tags (and intents) of the valid/test sets that the
        training set never shows: ``'error'`` (default) raises; ``'score'`` keeps them as
        gold for scoring (where the model cannot predict them, so they count as misses) and
        leaves them out of the loss, with a warning that counts them.
        """
        if unseen_labels not in ("error", "score"):
            raise ValueError(f"unseen_labels must be 'error' or 'score', not {unseen_labels!r}")
        splits: dict[str, list[Sentence]] = {}
        for name, sentences in (("train", train), ("valid", valid), ("test", test)):
            if sentences is None:
                continue
            sentences = [s if isinstance(s, Sentence) else Sentence(list(s.words), list(s.tags), getattr(s, "intent", None))
                         for s in sentences]
            if not sentences:
                raise ValueError(f"the {name} set is empty")
            if normalize_scheme(source_scheme) != normalize_scheme(tag_scheme):
                sentences = [Sentence(s.words, _convert(s.tags, source_scheme, tag_scheme), s.intent) for s in sentences]
            splits[name] = sentences
        if "train" not in splits:
            raise ValueError("a training set is required")
        vocab = vocab or LabelVocab.from_sentences(splits["train"])
        intents = [s.intent for s in splits["train"] if s.intent is not None]
        intent_vocab = IntentVocab(intents) if intents else None
        for name in ("valid", "test"):
            sentences = splits.get(name, [])
            unknown = sorted({t for s in sentences for t in s.tags} - set(vocab.labels))
            unknown_intents = sorted({s.intent for s in sentences if s.intent is not None}
                                     - set(intent_vocab.names if intent_vocab else ()))
            if not unknown and not unknown_intents:
                continue
            what = ", ".join(unknown + [f"intent {i}" for i in unknown_intents])
            if unseen_labels == "error":
                raise ValueError(f"the {name} set has labels the training set never shows: {what} "
                                 "(unseen_labels='score' scores them as misses instead)")
            tokens = sum(t in unknown for s in sentences for t in s.tags)
            n_intents = sum(s.intent in unknown_intents for s in sentences)
            warnings.warn(f"the {name} set has labels the training set never shows ({tokens} tokens, {n_intents} "
                          f"intents): {what}; they stay in the gold data and count as misses", stacklevel=2)
        return cls(tokenizer, splits, vocab, tag_scheme=tag_scheme, intent_vocab=intent_vocab,
                   unseen_labels=unseen_labels, **kwargs)

    @classmethod
    def create(
        cls,
        train_path: str | Path,
        valid_path: str | Path | None,
        checkpoint_dir: str | Path,
        test_path: str | Path | None = None,
        data_format: str = "auto",
        tag_scheme: str = "IOB2",
        do_lower_case: bool | None = None,
        valid_fraction: float | None = None,
        source_scheme: str | None = None,
        **kwargs,
    ) -> "NerData":
        """Read files (CoNLL, ATIS, FactRuEval, CSV; see ``read_dataset``) and tokenise them with the
        checkpoint's vocabulary.

        ``tag_scheme`` is the model's scheme; ``source_scheme`` the scheme of the files (any
        name, e.g. ``'BIOES'``, ``'bioul'``; ``None``: detected per file). Each file's tags are
        checked against its scheme and converted to ``tag_scheme``.

        ``valid_fraction``: with no ``valid_path``, hold out this fraction of the training
        sentences (the last ones, so documents stay together) as the validation set.
        """
        tokenizer = WordPieceTokenizer.from_pretrained(checkpoint_dir, do_lower_case=do_lower_case)
        loaded = {}
        for name, path in (("train", train_path), ("valid", valid_path), ("test", test_path)):
            if path is None:
                continue
            dataset = read_dataset(path, data_format, tag_scheme=source_scheme)
            loaded[name] = list(dataset)
            if not loaded[name]:
                raise ValueError(f"no sentences in {path}")
            if normalize_scheme(dataset.scheme) != normalize_scheme(tag_scheme):
                loaded[name] = [Sentence(s.words, _convert(s.tags, dataset.scheme, tag_scheme), s.intent)
                                for s in loaded[name]]
        if valid_fraction is not None:
            if valid_path is not None:
                raise ValueError("give either a validation file or valid_fraction, not both")
            if not 0.0 < valid_fraction < 1.0:
                raise ValueError(f"valid_fraction must be between 0 and 1, not {valid_fraction}")
            cut = len(loaded["train"]) - max(1, round(valid_fraction * len(loaded["train"])))
            if cut < 1:
                raise ValueError(f"{train_path} has too few sentences ({len(loaded['train'])}) to hold some out")
            loaded["train"], loaded["valid"] = loaded["train"][:cut], loaded["train"][cut:]
        return cls.from_sentences(loaded["train"], loaded.get("valid"), tokenizer, test=loaded.get("test"),
                                  source_scheme=tag_scheme, tag_scheme=tag_scheme, **kwargs)

    # --- examples and batches --------------------------------------------------------------------

    def encode(self, sentences: Iterable, labelled: bool = False) -> list[Example]:
        """Tokenise sentences (word lists, or objects with ``words``) into window examples."""
        sentences = list(sentences)
        word_lists = []
        for sentence_id, sentence in enumerate(sentences):
            words = list(sentence.words) if hasattr(sentence, "words") else list(sentence)
            if not words:
                raise ValueError(f"sentence {sentence_id} has no words")
            word_lists.append(words)
        pieces = batching.encode(self.tokenizer, word_lists, words=True)
        examples: list[Example] = []
        for sentence_id, _, window in batching.split_windows(self.tokenizer, pieces):
            sentence = sentences[sentence_id]
            tags = getattr(sentence, "tags", None) if labelled else None
            intent = getattr(sentence, "intent", None) if labelled else None
            first = window.word_index
            labels = None
            if tags is not None:
                labels = [self._label_id(t) for t in tags[first : first + len(window.words)]]
            intent_id = self._intent_id(intent) if (intent is not None and self.intent_vocab) else None
            examples.append(Example(len(examples), sentence_id, pieces[sentence_id], window, list(window.input_ids),
                                    window.word_starts, labels, intent_id))
        return examples

    @property
    def splits(self) -> list[str]:
        """The split names this data holds, in train/valid/test order."""
        return [name for name in SPLITS if name in self._examples]

    def _label_id(self, tag: str) -> int:
        if self.unseen_labels == "score" and tag not in self.vocab:
            return IGNORE_INDEX  # gold for scoring only (see from_sentences)
        return self.vocab.encode(tag)

    def _intent_id(self, intent: str) -> int:
        if self.unseen_labels == "score" and intent not in self.intent_vocab.ids:
            return IGNORE_INDEX
        return self.intent_vocab.encode(intent)

    def examples(self, split: str) -> list[Example]:
        if split not in self._examples:
            raise KeyError(f"no {split!r} set; this NerData has {', '.join(self._examples)}")
        return self._examples[split]

    def sentences(self, split: str) -> list[Sentence]:
        self.examples(split)
        return self._sentences[split]

    def batches(self, split_or_examples, shuffle: bool = False, epoch: int = 0) -> list[tuple[dict, list[Example]]]:
        """Length-bucketed batches under the token budget; shuffled per epoch when asked."""
        examples = self.examples(split_or_examples) if isinstance(split_or_examples, str) else split_or_examples
        rng = random.Random(self.seed * 1_000_003 + epoch)
        # Sort by length (random tie-break when shuffling), cut into budget-sized batches.
        groups = [[examples[i] for i in group]
                  for group in batching.bucket([len(e.input_ids) for e in examples], self.batch_tokens,
                                               self.max_batch_size, rng if shuffle else None)]
        if shuffle:
            rng.shuffle(groups)
        return [(self.collate(group), group) for group in groups]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Pad a group of examples: sub-token inputs (B, T) and word-level index/mask/labels (B, W),
        and the casing inputs of ``self.casing`` from the examples' original words."""
        return batching.collate(self.tokenizer, [e.window for e in examples], [e.labels for e in examples],
                                [e.intent for e in examples], casing=self.casing)

    def merge(self, examples: list[Example], window_tags: dict[int, list[int]]) -> list[list[int]]:
        """Per-window word predictions -> one prediction per word of each sentence."""
        by_sentence: dict[int, list[Example]] = {}
        for e in examples:
            by_sentence.setdefault(e.sentence_id, []).append(e)
        merged = []
        for sentence_id in range(len(by_sentence)):
            group = by_sentence[sentence_id]
            merged.append(batching.merge(group[0].pieces, [e.window for e in group],
                                         [window_tags[e.index] for e in group]))
        return merged


def _convert(tags: list[str], source: str, target: str) -> list[str]:
    """``convert``, keeping the continuation label ``X`` (CSV data) where it is."""
    if IGNORE_LABEL not in tags:
        return convert(tags, source, target)
    converted = iter(convert([t for t in tags if t != IGNORE_LABEL], source, target))
    return [t if t == IGNORE_LABEL else next(converted) for t in tags]
