"""The ``nertron`` command line.

Subcommands import what they need when they run, so ``nertron --help`` starts instantly
(no torch, no TensorFlow at parse time).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path
from collections.abc import Iterator, Sequence


class _LazyChoices(Sequence[str]):
    """argparse choices read from an object of a torch-heavy module (``MODEL_CLASSES``) only when
    argparse checks a value or lists them, not when the parser is built (``--help`` stays fast).
    Give the argument an explicit ``metavar``: argparse lists the choices for a default one."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def _values(self) -> list[str]:
        return list(getattr(importlib.import_module(self.module), self.name))

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __getitem__(self, index):
        return self._values()[index]


def _cmd_convert_tf(args: argparse.Namespace) -> int:
    from nertron.engine.convert import convert_tf_checkpoint

    report = convert_tf_checkpoint(args.tf_checkpoint, args.bert_config, args.output, vocab_file=args.vocab)
    print(f"converted {len(report.converted)} variables -> {report.output_dir / 'model.safetensors'}")
    print(f"wrote {report.output_dir / 'config.json'}")
    if report.copied_vocab:
        print(f"copied {report.output_dir / 'vocab.txt'}")
    else:
        print("no vocab.txt beside the checkpoint: copy it into the output directory (or pass --vocab)")
    if report.skipped_optimizer:
        print(f"skipped {len(report.skipped_optimizer)} optimizer variables (adam_m, adam_v, global_step)")
    if report.skipped_heads:
        print(
            f"skipped {len(report.skipped_heads)} pre-training head variables, not part of the encoder: "
            + ", ".join(report.skipped_heads)
        )
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import torch

    from nertron.engine.bert import BertModel
    from nertron.engine.checkpoint import default_checkpoint_dir
    from nertron.engine.tokenizer import WordPieceTokenizer

    model_dir = Path(args.model) if args.model else default_checkpoint_dir()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = BertModel.from_pretrained(model_dir, dtype=dtype, device=args.device)
    tokenizer = WordPieceTokenizer.from_pretrained(model_dir, max_length=model.config.max_position_embeddings)
    text = args.text if args.text != "-" else sys.stdin.read()
    pieces = tokenizer.encode_text(text)
    windows = tokenizer.windows(pieces)
    config = model.config
    print(f"model: {model_dir} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, {args.dtype})")
    print(f"{len(pieces.words)} words -> {len(pieces.input_ids)} sub-tokens in {len(windows)} window(s)")
    for number, window in enumerate(windows):
        batch = {key: value.to(args.device) for key, value in tokenizer.batch([window]).items()}
        with torch.inference_mode():
            out = model(**batch, output_hidden_states=True)
        states = torch.stack(out.hidden_states)  # shape: (N + 1, 1, T, H)
        if len(windows) > 1:
            print(f"window {number}: words {window.word_index}..{window.word_index + len(window.words) - 1}")
        print(f"hidden states: {tuple(states.shape)} (embeddings + {config.num_hidden_layers} layers, batch, tokens, hidden)")
        tokens = ["[CLS]", *window.tokens, "[SEP]"]
        shown = min(len(tokens), args.tokens)
        last = out.last_hidden_state[0].float()
        for position in range(shown):
            values = " ".join(f"{v:+.4f}" for v in last[position, : args.values].tolist())
            print(f"  {tokens[position]:>14}  {values} ...")
        if shown < len(tokens):
            print(f"  ... {len(tokens) - shown} more tokens")
    return 0


def _summary_table(title: str, scores: dict) -> str:
    rows = [f"{title}", f"{'type':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for kind, values in sorted(scores["per_type"].items()):
        rows.append(f"{kind:<12}{values['precision']:>10.4f}{values['recall']:>10.4f}{values['f1']:>10.4f}"
                    f"{values['support']:>9}")
    rows.append(f"{'micro':<12}{scores['span_precision']:>10.4f}{scores['span_recall']:>10.4f}"
                f"{scores['span_f1']:>10.4f}")
    if "intent_accuracy" in scores:
        rows.append(f"intent accuracy {scores['intent_accuracy']:.4f}, intent F1 {scores['intent_f1']:.4f}")
    return "\n".join(rows)


@contextlib.contextmanager
def _cli_flags() -> Iterator[None]:
    """Errors of the data layer that name a Python argument name the command-line flag instead."""
    try:
        yield
    except ValueError as err:
        message = str(err).replace("unseen_labels='score'", "--unseen-labels score")
        if message == str(err):
            raise
        raise ValueError(message) from err


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    import torch

    from nertron.engine.checkpoint import default_checkpoint_dir
    from nertron.engine.data.loader import NerData
    from nertron.engine.files import write_atomic
    from nertron.engine.learner import NerLearner
    from nertron.engine.models import MODEL_CLASSES

    torch.manual_seed(args.seed)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in OUTPUT, --overwrite replaces it: choose one")
    if not (args.resume or args.overwrite):
        from nertron.engine.learner import check_output_dir

        check_output_dir(args.output)  # before reading any data: refuse early, lose nothing
    if args.valid is None and args.valid_fraction is None:
        raise ValueError("a validation set is needed to pick the best model: give --valid or --valid-fraction")
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint_dir()
    with _cli_flags():
        data = NerData.create(args.train, args.valid, checkpoint, test_path=args.test, data_format=args.format,
                              tag_scheme=args.tag_scheme, source_scheme=args.data_scheme,
                              batch_tokens=args.batch_tokens, seed=args.seed,
                              valid_fraction=args.valid_fraction, unseen_labels=args.unseen_labels)
    cls = MODEL_CLASSES[args.model]
    options = dict(labels=data.vocab.labels, tag_scheme=args.tag_scheme, enc_hidden_dim=args.enc_hidden_dim,
                   rnn_layers=args.rnn_layers, num_heads=args.num_heads, key_dim=args.key_dim, val_dim=args.val_dim,
                   input_dropout=args.input_dropout, bert_mode=args.bert_mode, freeze=not args.fine_tune,
                   backend=args.backend, casing=args.casing, shape_dim=args.shape_dim, char_dim=args.char_dim,
                   char_filters=args.char_filters)
    if cls.joint:
        if data.intent_vocab is None:
            raise ValueError(f"{args.model} classifies intents, but {args.train} has none (use the ATIS format)")
        options["intent_size"] = len(data.intent_vocab)
    model = cls.create(data.vocab.num_labels, checkpoint, **options)
    learner = NerLearner(model, data, args.output, lr=args.lr, clip=args.clip, device=args.device, seed=args.seed,
                         cache_features={"auto": "auto", "on": True, "off": False}[args.cache],
                         cache_dir=args.cache_dir, bert_lr=args.bert_lr, layer_decay=args.layer_decay)
    learner.fit(args.epochs, target_metric=args.target_metric, resume=args.resume, overwrite=args.overwrite)
    from nertron.engine.models import NerModel

    learner.model = NerModel.load(args.output, backend=args.backend).to(learner.device)
    results = {}
    for split in ("valid", "test"):
        if split not in data.splits:
            continue
        results[split] = learner.evaluate(split)
        source = args.test if split == "test" else args.valid or f"last {args.valid_fraction:.0%} of {args.train}"
        print(_summary_table(f"best model on {split} ({source})", results[split]))
    text = json.dumps(results, indent=1) + "\n"
    write_atomic(Path(args.output) / "results.json", lambda path: path.write_text(text, encoding="utf-8"))
    print(f"saved the best model (by {args.target_metric}) to {args.output}")
    return 0


_DATA_SCHEME_HELP = ("tag scheme of the data files: IOB1, IOB2/BIO, IOE1, IOE2, BIOES/IOBES, BILOU/BIOUL or BMES, "
                     "any case (default: detected per file; a file that mixes schemes is rejected)")


def _data_scheme(value: str) -> str:
    from nertron.tags import normalize_scheme  # pure Python: cheap enough for argparse

    try:
        return normalize_scheme(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _model_scheme(value: str) -> str:
    name = _data_scheme(value)
    if name not in ("IOB2", "IOB1", "BIOES"):
        raise argparse.ArgumentTypeError(f"a model's tag scheme is IOB2 (BIO), IOB1 or BIOES (IOBES), not {value!r}")
    return name


def _cmd_eval(args: argparse.Namespace) -> int:
    from nertron.engine.data.loader import IntentVocab, NerData
    from nertron.engine.data.readers import read_dataset
    from nertron.engine.data.vocab import LabelVocab
    from nertron.engine.learner import NerLearner
    from nertron.engine.models import NerModel
    from nertron.engine.tokenizer import WordPieceTokenizer

    model = NerModel.load(args.model, checkpoint_dir=args.checkpoint, backend=args.backend)
    if model.config.labels is None:
        raise ValueError(f"{args.model}: the model has no label names (config.labels); save it with its labels")
    vocab = LabelVocab(model.config.labels)
    dataset = read_dataset(args.data, args.format, tag_scheme=args.data_scheme)
    tokenizer = WordPieceTokenizer.from_pretrained(model.config.checkpoint_dir)
    sentences = list(dataset)
    with _cli_flags():
        data = NerData.from_sentences(sentences, sentences, tokenizer, source_scheme=dataset.scheme or "IOB2",
                                      tag_scheme=model.config.tag_scheme, vocab=vocab,
                                      unseen_labels=args.unseen_labels)
    if model.intents is not None:
        data.intent_vocab = IntentVocab(model.intents)
    learner = NerLearner(model, data, args.model, device=args.device, cache_features=False)
    print(_summary_table(f"{args.model} on {args.data}", learner.evaluate("valid")))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from nertron.bench.report import main
    except ImportError as err:  # the baselines (transformers, pytorch-crf, matplotlib) are the bench extra
        raise ImportError(f"nertron bench needs the benchmark extra: pip install 'nertron[bench]' ({err})") from err
    argv = []
    for flag, value in (("--sections", args.sections), ("--device", args.device), ("--out", args.out),
                        ("--threads", args.threads)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--quick"] if args.quick else []
    argv += ["--no-compile"] if args.no_compile else []
    return main(argv)


def _cmd_tag(args: argparse.Namespace) -> int:
    if args.input is not None and args.texts:
        raise ValueError("give texts on the command line or --input FILE, not both")
    if args.input is None and not args.texts:
        raise ValueError("nothing to tag: give texts, or --input FILE ('-' for standard input)")
    output = args.output or "-"
    fmt = args.format or ("pretty" if output == "-" else "jsonl")
    from nertron.engine.distributed import distributed_env
    from nertron.engine.tagger import check_input, check_output, resolve_device

    distributed = distributed_env() is not None
    # every check before anything heavy is loaded and before the output is touched
    if args.input is not None:
        check_input(args.input, stdin=not distributed)
    check_output(output, args.input)
    if args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be a positive number, got {args.batch_tokens}")
    if distributed:
        from nertron.engine.distributed import tag_file_distributed

        if args.input is None or output == "-" or fmt == "pretty":
            raise ValueError("under torchrun, nertron tag needs --input FILE, --output FILE and --format jsonl or conll")
        count = tag_file_distributed(args.input, output, format=fmt, model=args.model, device=args.device,
                                     dtype=args.dtype, checkpoint=args.checkpoint, batch_tokens=args.batch_tokens,
                                     progress=False if args.quiet else None)
        if int(os.environ["RANK"]) == 0:
            print(f"tagged {count} lines of {args.input} -> {output}", file=sys.stderr)
        return 0
    resolve_device(args.device)  # an unknown device or CUDA without one: fail before loading the model

    from nertron.engine.progress import Progress
    from nertron.engine.tagger import Tagger, file_progress, format_record, open_output, read_lines

    tagger = Tagger.load(args.model, device=args.device, dtype=args.dtype, checkpoint=args.checkpoint,
                         batch_tokens=args.batch_tokens)
    texts = read_lines(args.input) if args.input is not None else args.texts
    # a bar for a file, not for texts on the command line; on stderr, when it is a terminal
    bar = file_progress(args.input, False if args.quiet else None) if args.input is not None else \
        Progress(enabled=False)
    with open_output(output) as out:
        for text, result in tagger.tag_lines(texts, progress=bar):
            if fmt != "pretty":
                out.write(format_record(text, result, fmt))
                continue
            lines = [text]
            for e in result.entities:
                lines.append(f"  {e.label:<8} {e.text!r:<32} {f'{e.start}:{e.end}':<12} {e.score:.3f}")
            if not result.entities:
                lines.append("  (no entities)")
            out.write("\n".join(lines) + "\n\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nertron._version import __version__
    from nertron.bindings import BACKENDS
    from nertron.engine.data.readers import FORMATS

    parser = argparse.ArgumentParser(prog="nertron", description="Kernel-optimised BERT named-entity recognition.")
    parser.add_argument("--version", action="version", version=f"nertron {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = sub.add_parser(
        "convert-tf",
        help="convert a Google TF BERT checkpoint to safetensors",
        description="Convert Google's TensorFlow BERT checkpoint to model.safetensors + config.json (+ vocab.txt). "
        "Needs TensorFlow: pip install 'nertron[tf]'.",
    )
    convert.add_argument("--tf-checkpoint", required=True, help="checkpoint prefix, e.g. DIR/bert_model.ckpt")
    convert.add_argument("--bert-config", required=True, help="Google's bert_config.json")
    convert.add_argument("--output", required=True, help="output directory")
    convert.add_argument("--vocab", default=None, help="vocab.txt (default: the one beside the checkpoint)")
    convert.set_defaults(run=_cmd_convert_tf)

    encode = sub.add_parser(
        "encode",
        help="print the BERT hidden states of a text, for a quick look",
        description="Tokenise a text, run the BERT encoder and print the hidden states' shape and a few values.",
    )
    encode.add_argument("text", help="the text to encode ('-' reads standard input)")
    encode.add_argument("--model", default=None, help="checkpoint directory (default: the installed all-MiniLM-L6-v2)")
    encode.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    encode.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    encode.add_argument("--tokens", type=int, default=12, help="how many token rows to print")
    encode.add_argument("--values", type=int, default=6, help="how many values of each row to print")
    encode.set_defaults(run=_cmd_encode)

    models = _LazyChoices("nertron.engine.models", "MODEL_CLASSES")
    formats = ("auto", *FORMATS)
    train = sub.add_parser("train", help="train a NER model", description="Train a ner-bert model on a dataset and "
                           "save the best checkpoint (by the target metric on the validation set).")
    train.add_argument("--train", required=True, help="training file (or FactRuEval folder)")
    train.add_argument("--valid", default=None, help="validation file (or folder)")
    train.add_argument("--valid-fraction", type=float, default=None,
                       help="no validation file: hold out this fraction of the training sentences (the last ones)")
    train.add_argument("--unseen-labels", choices=("error", "score"), default="error",
                       help="valid/test labels or intents the training set never shows: fail, or score them as misses")
    train.add_argument("--test", default=None, help="test file (or folder), scored with the best model")
    train.add_argument("--format", choices=formats, default="auto")
    train.add_argument("--output", required=True, help="directory for the best model, its log and results")
    train.add_argument("--model", choices=models, default="BertBiLSTMAttnCRF", metavar="MODEL",
                       help="the model class: one of %(choices)s")
    train.add_argument("--checkpoint", default=None, help="BERT checkpoint (default: the installed all-MiniLM-L6-v2)")
    train.add_argument("--tag-scheme", type=_model_scheme, default="IOB2", metavar="SCHEME",
                       help="the model's tag scheme, the data being converted to it: IOB2 (= BIO, the default), "
                       "IOB1 or BIOES (= IOBES), any case")
    train.add_argument("--data-scheme", type=_data_scheme, default=None, metavar="SCHEME", help=_DATA_SCHEME_HELP)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--clip", type=float, default=5.0)
    train.add_argument("--batch-tokens", type=int, default=1024, help="padded sub-tokens per batch")
    train.add_argument("--enc-hidden-dim", type=int, default=128)
    train.add_argument("--rnn-layers", type=int, default=1)
    train.add_argument("--num-heads", type=int, default=3)
    train.add_argument("--key-dim", type=int, default=64)
    train.add_argument("--val-dim", type=int, default=64)
    train.add_argument("--input-dropout", type=float, default=0.5)
    train.add_argument("--bert-mode", choices=("weighted", "softmax", "last"), default="weighted")
    train.add_argument("--fine-tune", action="store_true", help="train BERT too (reference path, no feature cache)")
    train.add_argument("--bert-lr", type=float, default=5e-5,
                       help="with --fine-tune: peak learning rate of BERT's top layer (the head uses --lr)")
    train.add_argument("--layer-decay", type=float, default=1.0,
                       help="with --fine-tune: each BERT layer below the top learns at this factor of the one above")
    train.add_argument("--casing", choices=("auto", "none", "shape", "chars"), default="auto",
                       help="casing features of the original words beside BERT's: word shapes, or shapes and a "
                       "character CNN (auto: on when the checkpoint's tokenizer lower-cases)")
    train.add_argument("--shape-dim", type=int, default=16, help="word-shape embedding size (--casing shape/chars)")
    train.add_argument("--char-dim", type=int, default=32, help="character embedding size (--casing chars)")
    train.add_argument("--char-filters", type=int, default=64, help="character CNN outputs (--casing chars)")
    train.add_argument("--target-metric", default="span_f1", help="span_f1, token_f1, intent_accuracy, ...")
    train.add_argument("--cache", choices=("auto", "on", "off"), default="auto", help="cache frozen BERT states")
    train.add_argument("--cache-dir", default=None, help="keep cached BERT states on disk here, shared by runs "
                       "on the same data and encoder")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT's trainer state")
    train.add_argument("--overwrite", action="store_true",
                       help="train afresh into an OUTPUT that holds a model (its files are replaced as the new "
                       "ones are written); without it or --resume a non-empty OUTPUT is refused")
    train.add_argument("--device", default=None)
    train.add_argument("--backend", choices=BACKENDS, default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_cmd_train)

    evaluate = sub.add_parser("eval", help="score a trained model on a dataset",
                              description="Span-level (and intent) scores per type of a trained model on a dataset.")
    evaluate.add_argument("--model", required=True, help="directory written by `nertron train`")
    evaluate.add_argument("--data", required=True, help="dataset file (or FactRuEval folder)")
    evaluate.add_argument("--format", choices=formats, default="auto")
    evaluate.add_argument("--data-scheme", type=_data_scheme, default=None, metavar="SCHEME", help=_DATA_SCHEME_HELP)
    evaluate.add_argument("--unseen-labels", choices=("error", "score"), default="error",
                          help="labels or intents of the data the model was never trained on: fail, "
                          "or score them as misses")
    evaluate.add_argument("--checkpoint", default=None, help="BERT checkpoint, if it moved since training")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--backend", choices=BACKENDS, default="auto")
    evaluate.set_defaults(run=_cmd_eval)

    tag = sub.add_parser(
        "tag", help="tag named entities in texts or a file",
        description="Find named entities with a trained model. Texts come from the command line or from --input "
        "(one text per line); under torchrun (--nproc_per_node=N) the input file is split over the processes "
        "and merged back in order.")
    tag.add_argument("texts", nargs="*", help="texts to tag")
    tag.add_argument("--input", default=None, help="UTF-8 file, one text per line ('-': standard input)")
    tag.add_argument("--output", default=None, help="output file (default: standard output); an existing file "
                     "is replaced all at once when tagging completes, and left untouched when it fails; "
                     "it cannot be the input")
    tag.add_argument("--format", choices=("jsonl", "conll", "pretty"), default=None,
                     help="jsonl: one JSON object per text; conll: word<TAB>tag lines, a blank line after each text; "
                     "pretty: one line per entity (default: pretty on standard output, jsonl in a file)")
    tag.add_argument("--model", default=None, help="model directory (default: the model shipped with nertron)")
    tag.add_argument("--checkpoint", default=None, help="BERT checkpoint, if it moved since training")
    tag.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N (default: cuda if "
                     "available, else cpu; under torchrun cuda:LOCAL_RANK)")
    tag.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                     help="BERT's compute dtype (default: bf16 on CUDA, fp32 on CPU; bf16/fp16 need CUDA)")
    tag.add_argument("--batch-tokens", type=int, default=4096, help="padded sub-tokens per batch")
    tag.add_argument("--quiet", action="store_true", help="no progress bar (with --input, one is shown on stderr "
                     "when it is a terminal: texts, texts/s, sub-tokens/s)")
    tag.set_defaults(run=_cmd_tag)

    bench = sub.add_parser("bench", help="run the benchmark suite (Markdown + JSON + plots)",
                           description="Benchmark every component (CRF, pooling, attention, GEMM, LayerNorm, "
                           "encoder, end-to-end tagger) against transformers / pytorch-crf baselines, eager and "
                           "torch.compile, in one run on this device (nertron.bench.report; pip install 'nertron[bench]').")
    bench.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    bench.add_argument("--out", default=None, help="output directory (default: bench/results)")
    bench.add_argument("--quick", action="store_true", help="tiny grid: a smoke test, not a measurement")
    bench.add_argument("--sections", default=None, help="comma-separated subset of the report's sections "
                       "(default: all; an unknown name lists them)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    bench.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, ImportError, _RankFailed()) as err:
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        print(f"nertron {args.command}: error: {message}", file=sys.stderr)
        return 2


def _RankFailed() -> type:
    """``distributed.RankFailed`` if that module is loaded (another torchrun rank failed), else a
    class nothing raises (``nertron --help`` does not import torch)."""
    module = sys.modules.get("nertron.engine.distributed")
    return getattr(module, "RankFailed", _Never)


class _Never(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
