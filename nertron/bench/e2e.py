"""Section ``e2e``: the tagger end to end (BERT + weighted pooling + BiLSTM + attention + CRF
decode, ``BertBiLSTMAttnCRF`` over the all-MiniLM-L6-v2 checkpoint, word batches collated as
the learner does) vs transformers BertModel + the same head in plain PyTorch + ``torchcrf``
decode (``BaselineTagger``), eager and with the encoder under ``torch.compile``; plus
``nertron.Tagger.tag_words`` (words in, entities out).

``BaselineTagger`` and the sentence readers are shared with ``bench/bench_e2e.py`` and
``bench/gpu_quick.py``.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import traceback
from pathlib import Path

import torch

from .encoder import checkpoint_dir
from .harness import Bench, compiled_measure, conll_lengths, error_text, make_row, measure, status_row, sweep_points

TITLE = "End-to-end tagger (BERT + weighted pooling + BiLSTM + attention + CRF decode)"
OP = "BertBiLSTMAttnCRF tag (minilm)"
BASELINE = "transformers+torchcrf"


def conll_sentences() -> tuple[list | None, str]:
    """Real CoNLL-2003 sentences (eng.testb) if the data is there (``$NERTRON_DATA``, else the
    checkout's ``../shared/data``), else (None, "missing")."""
    from nertron.engine.data.readers import read_dataset

    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    path = Path(os.environ.get("NERTRON_DATA", default)) / "conll2003" / "eng.testb"
    if path.is_file():
        return list(read_dataset(path, "conll")), "CoNLL-2003 eng.testb (conll2003/eng.testb of the shared data)"
    return None, "missing"


def synthetic_sentences(tokenizer, count: int, seed: int = 0) -> list:
    """Sentences of whole-word vocabulary entries with CoNLL-2003 sub-token lengths (no data)."""
    from nertron.engine.data.readers import Sentence

    vocab = [w for w in tokenizer.vocab if w.isalpha() and len(w) > 2] if hasattr(tokenizer, "vocab") else None
    vocab = vocab or ["Peter", "Blackburn", "Germany", "rejects", "call", "boycott", "British", "lamb", "the", "said"]
    rng = random.Random(seed)
    return [Sentence([rng.choice(vocab) for _ in range(max(1, n - 2))], ["O"] * max(1, n - 2))
            for n in conll_lengths(count, seed)]


class BaselineTagger(torch.nn.Module):
    """The baseline a user would write: transformers BertModel (sdpa) with all hidden states,
    the weighted layer mix inline, first sub-token gather, then the same head as nertron's
    model (its BiLSTM / attention / emission modules are plain PyTorch; copied with their
    weights) and ``torchcrf.CRF`` Viterbi decode (nertron's BIO constraints baked into the
    transition scores as -10000)."""

    def __init__(self, hf, model):
        super().__init__()
        import torchcrf

        self.hf = hf
        pooling = model.features.pooling
        self.mode = pooling.mode
        self.weights = torch.nn.Parameter(pooling.weights.detach().clone())
        self.gamma = torch.nn.Parameter(pooling.gamma.detach().clone())
        self.casing = copy.deepcopy(model.casing)  # the casing features of the original words (None: off)
        self.lstm = copy.deepcopy(model.lstm.lstm)
        self.attention = copy.deepcopy(model.attention)
        self.emissions = copy.deepcopy(model.emissions)
        K = model.config.label_size
        self.crf = torchcrf.CRF(K, batch_first=True)
        start, end, trans = model.crf.transition_scores(constrained=True)
        with torch.no_grad():
            for dst, src in ((self.crf.start_transitions, start), (self.crf.end_transitions, end),
                             (self.crf.transitions, trans)):
                dst.copy_(torch.nan_to_num(src.detach().float(), neginf=-10000.0))

    def forward(self, batch: dict[str, torch.Tensor], encoder=None) -> list[list[int]]:
        out = (self.hf if encoder is None else encoder)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        layers = out.hidden_states[1:]
        s = torch.softmax(self.weights, 0) if self.mode == "softmax" else self.weights
        mixed = self.gamma * sum(w * h.float() for w, h in zip(s, layers))  # shape: (B, T, H)
        index = batch["word_index"].unsqueeze(-1).expand(-1, -1, mixed.shape[-1])
        x = mixed.gather(1, index)  # shape: (B, W, H)
        if self.casing is not None:
            x = torch.cat([x, self.casing(batch)], -1)
        mask = batch["word_mask"]
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        x, _ = self.lstm(packed)
        x, _ = torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=mask.shape[1])
        x = self.attention(x, mask)
        return self.crf.decode(self.emissions(x).float(), mask)


class Setup:
    """Everything the e2e rows run: the data, nertron's model and Tagger, the baseline."""

    def __init__(self, bench: Bench):
        import transformers

        from nertron import Tagger
        from nertron.engine.data.loader import NerData
        from nertron.engine.data.vocab import LabelVocab
        from nertron.engine.models import BertBiLSTMAttnCRF
        from nertron.engine.tokenizer import WordPieceTokenizer

        self.bench = bench
        path = checkpoint_dir()
        tokenizer = WordPieceTokenizer.from_pretrained(path)
        sentences, source = conll_sentences()
        if sentences is None:
            sentences, source = synthetic_sentences(tokenizer, 2000), "synthetic (vocabulary words, CoNLL-2003 lengths)"
        self.sentences, self.source = sentences, source
        self.vocab = LabelVocab.from_sentences(sentences)
        self.data = NerData.from_sentences(sentences, None, tokenizer, vocab=self.vocab)
        torch.manual_seed(0)
        model = BertBiLSTMAttnCRF.create(self.vocab.num_labels, path, labels=self.vocab.labels).eval()
        self.data.casing = model.config.casing  # batches carry the casing inputs the model reads
        self.hf = transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa").eval().requires_grad_(False)
        self.baseline = BaselineTagger(self.hf, model).eval()
        model.to(bench.device)
        self.baseline.to(bench.device)
        if bench.cuda:  # frozen encoder in bf16, head under bf16 autocast (as the learner runs on GPU)
            model.features.bert.to(torch.bfloat16)
            self.hf.to(torch.bfloat16)
        self.model = model
        self.tagger = Tagger(model, tokenizer, device=bench.device)
        self.autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=bench.cuda)

    def word_lists(self, sweep: str, point: int, count: int, rng: random.Random) -> list[list[str]]:
        if sweep == "batch":  # real sentences
            return [list(self.sentences[i].words) for i in rng.sample(range(len(self.sentences)), count)]
        return sentences_of_length(self.data, self.sentences, point, count, rng)

    def batch(self, word_lists: list[list[str]]) -> dict[str, torch.Tensor]:
        """word lists -> window examples -> padded batch, as NerLearner.predict does."""
        return self.data.collate(self.data.encode(word_lists))

    def run_ours(self, batch: dict[str, torch.Tensor], model=None) -> list[list[int]]:
        with torch.no_grad(), torch.autocast(**self.autocast):
            out = (model if model is not None else self.model)({k: v.to(self.bench.device, non_blocking=True) for k, v in batch.items()})
        return out.tags.cpu().tolist()  # the learner's .cpu().tolist(): synchronises

    def run_base(self, batch: dict[str, torch.Tensor], encoder=None) -> list[list[int]]:
        with torch.no_grad(), torch.autocast(**self.autocast):
            out = self.baseline({k: v.to(self.bench.device, non_blocking=True) for k, v in batch.items()}, encoder)
        self.bench.sync()
        return out


def sentences_of_length(data, sentences, length: int, count: int, rng: random.Random) -> list[list[str]]:
    """``count`` word lists of exactly ``length`` sub-tokens with [CLS]/[SEP] where possible:
    real words taken in order from a random starting sentence, the last word cut to fit."""
    words_all = [w for s in sentences for w in s.words]
    tokenizer = data.tokenizer
    pieces_of: dict[str, int] = {}
    out = []
    for _ in range(count):
        start = rng.randrange(max(1, len(words_all) - 4 * length))
        words, used = [], 2
        for word in words_all[start:]:
            if word not in pieces_of:
                pieces_of[word] = len(tokenizer.encode_words([word]).input_ids)
            pieces = pieces_of[word]
            if used + pieces > length:
                break
            words.append(word)
            used += pieces
        out.append(words or ["x"])
    return out


def agreement(ours: list[list[int]], theirs: list[list[int]], mask: torch.Tensor) -> float | None:
    """Fraction of words where both decoders give the same tag (same weights: ~1 in fp32)."""
    same = total = 0
    for row, (a, b) in enumerate(zip(ours, theirs)):
        n = int(mask[row].sum())
        same += sum(int(x == y) for x, y in zip(a[:n], b[:n]))
        total += n
    return same / total if total else None


def section(bench: Bench) -> list[dict]:
    try:
        s = Setup(bench)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [status_row("e2e", OP, "error", error_text(err), baseline=BASELINE)]
    rng = random.Random(0)
    rows = []
    for sweep, point, lengths in sweep_points(bench, "model"):
        B = len(lengths)
        word_lists = s.word_lists(sweep, point, B, rng)
        batch = s.batch(word_lists)
        tokens = int(batch["attention_mask"].sum())
        words = int(batch["word_mask"].sum())
        config = dict(B=B, T=int(batch["input_ids"].shape[1]), lengths="conll" if sweep == "batch" else point,
                      real_tokens=tokens, padded_tokens=int(batch["input_ids"].numel()), words=words,
                      labels=s.vocab.num_labels, data=s.source, dtype="bf16 encoder + bf16 autocast" if bench.cuda
                      else "fp32", path="triton" if bench.cuda else "reference (torch)")
        label = f"e2e B={B} T={config['T']}"
        count = dict(tokens=tokens, sentences=B)
        impls = {"nertron": measure(bench, lambda: s.run_ours(batch), label=label + " nertron", **count),
                 BASELINE: measure(bench, lambda: s.run_base(batch), label=f"{label} {BASELINE}", **count)}
        if bench.compile_here(sweep, point):
            def make_compiled():  # the encoder compiled; the head's packed LSTM and torchcrf stay eager
                compiled = torch.compile(s.hf, dynamic=False)
                return lambda: s.run_base(batch, compiled)
            impls["transformers(compiled)+torchcrf"] = compiled_measure(
                bench, make_compiled, label=label + " transformers(compiled)+torchcrf", **count)

            def make_ours_compiled():  # nertron's whole model compiled: no graph break, dynamic shapes
                compiled = torch.compile(s.model, dynamic=True)
                return lambda: s.run_ours(batch, compiled)
            impls["nertron compiled"] = compiled_measure(bench, make_ours_compiled,
                                                         label=label + " nertron compiled", **count)
        impls["nertron Tagger.tag_words"] = measure(
            bench, lambda: s.tagger.tag_words(word_lists), label=label + " Tagger.tag_words",
            note="words in: tokenization, batching, decode and entity spans with their CRF scores", **count)
        rows.append(make_row("e2e", OP, sweep, config, impls, BASELINE, tokens, B,
                             tags_agree=agreement(s.run_ours(batch), s.run_base(batch), batch["word_mask"])))
    return rows
