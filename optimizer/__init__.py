"""The DRPO search. Imports ``prompts`` only."""
