"""``python -m drpo``: the same as the ``drpo`` command (used to start child processes)."""

from drpo.cli import main

main()
