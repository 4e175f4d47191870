"""Models and tokenizers: loading (Hub ids, folders, adapter chains), the tokenizer and its one parity
check, scoring and generation."""
