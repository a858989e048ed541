"""The contract between the proxy and the optimizer.

Artifact schema (:mod:`prompts.artifact`), the shared prompt layout used both when
training and when serving (:mod:`prompts.layout`), example retrieval
(:mod:`prompts.retrieval`), configuration (:mod:`prompts.config`) and the versioned
store (:mod:`prompts.store`). This package imports neither ``proxy`` nor ``optimizer``.
"""
