"""`python -m hftune ...` (also `accelerate launch -m hftune ...` and `torchrun -m hftune ...`)."""

from hftune.cli import entry

if __name__ == "__main__":
    entry()
