"""Composition root: the ``drpo`` command line and the embedded backend launcher.

Only this package imports both ``proxy`` and ``optimizer``.
"""
