"""The OpenAI-compatible alignment proxy. Imports ``prompts`` only."""
