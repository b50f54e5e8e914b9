"""The ``nertron`` command line.

Subcommands import what they need when they run, so ``nertron --help`` starts instantly
(no torch, no TensorFlow at parse time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def build_parser() -> argparse.ArgumentParser:
    from nertron._version import __version__

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"nertron {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
