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
    pass


class RegistryConflict(RegistryError):
    pass
