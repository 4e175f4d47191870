"""hftune: the alignment recipe (pretrain → SFT → reward → RLHF → eval) from config files, on TRL/PEFT."""

__version__ = "0.1.0"
