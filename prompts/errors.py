"""Exceptions of the prompts package.

PromptsError
├── ArtifactNotFound      no such model / version in the store
├── InvalidArtifact       a file or payload that is not a valid artifact
├── NothingToRollBack     the model has no earlier active version
└── RegistryError         the shared registry refused or could not take a change
    ├── RegistryUnavailable   Redis cannot be reached (nothing was changed)
    └── RegistryConflict      another writer got there first (nothing was changed)
"""


class PromptsError(Exception):
    """Base class for store and artifact errors."""


class ArtifactNotFound(PromptsError, LookupError):
    pass


class InvalidArtifact(PromptsError, ValueError):
    pass


class NothingToRollBack(PromptsError):
    pass


class RegistryError(PromptsError):
    pass


class RegistryUnavailable(RegistryError):
    """Redis cannot be reached; ``reason`` says where and why, the message adds what it means."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}; nothing was changed. Changes are refused while the registry is down so that replicas "
            "never diverge (they keep serving their last state); try again once it is back."
        )
        self.reason = reason


class RegistryConflict(RegistryError):
    pass
