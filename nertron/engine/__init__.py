"""The NER engine: BERT config and model, tokenizer and alignment, checkpoint I/O, CLI."""
