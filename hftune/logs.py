"""Logging for a command: hftune's own messages at INFO on stderr, the libraries' chatter quieted. Set up
once a process by the CLI, and by each run the pipeline starts beside others (`hftune.side_by_side`)."""

from __future__ import annotations

import logging
import sys
import warnings


def setup(debug: bool) -> None:
    """hftune's log format and levels, and the libraries' chatter quieted (`--debug` keeps it)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="[hftune] %(levelname)s %(message)s" if debug else "[hftune] %(message)s",
        stream=sys.stderr,
    )
    # Our own loggers at INFO; the libraries keep their warnings but not their chatter. In a multi-process
    # run only the main process reports progress and warnings (the others would repeat them); the others
    # speak up for errors only.
    from hftune import distributed

    main = distributed.is_main_process()
    logging.getLogger("hftune").setLevel(logging.DEBUG if debug else logging.INFO if main else logging.ERROR)
    if not main:
        import datasets

        datasets.disable_progress_bars()
    if not debug:
        # `kernels`: importing TRL's configs imports transformers' Trainer, which imports PEFT, which imports
        # bitsandbytes; on a CPU with AVX512-BF16 bitsandbytes then fetches a CPU kernel from the Hub at
        # import, and offline `kernels` warns on every command about a kernel hftune never uses.
        for noisy in ("bitsandbytes", "kernels", "httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # hftune tokenizes every row whole on purpose, to measure it and drop, truncate or flag the rows
        # longer than `max_length` itself (`too_long`), as TRL's trainers measure theirs; transformers'
        # warning that such a sequence "will result in indexing errors" is about a model call that never
        # happens.
        tokenization = logging.getLogger("transformers.tokenization_utils_base")
        if not tokenization.filters:  # once a process (tests call `main` many times)
            tokenization.addFilter(
                lambda record: not record.getMessage().startswith("Token indices sequence length is longer")
            )
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # its INFO notes are for its developers
        # Deprecation notices between the libraries hftune wraps (TRL calling transformers' old names) are
        # for their maintainers, not for someone training a model; --debug shows them.
        warnings.filterwarnings(
            "ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate)\."
        )
