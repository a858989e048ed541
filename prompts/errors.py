"""Exceptions of the prompts package.

    PromptsError
    ├── ArtifactNotFound      no such model / version in the store
    ├── InvalidArtifact       a file or payload that is not a valid artifact
    └── NothingToRollBack     the model has no earlier active version
"""


class PromptsError(Exception):
    """Base class for store and artifact errors."""


class ArtifactNotFound(PromptsError, LookupError):
    pass


class InvalidArtifact(PromptsError, ValueError):
    pass


class NothingToRollBack(PromptsError):
    pass
