"""Models and tokenizers: loading (Hub ids, folders, adapter chains, variants sharing weights), the
tokenizer and its one parity check, scoring, generation (with decoding settings and cached replies) and the
cache of what models compute."""
