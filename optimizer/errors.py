"""Exceptions of the optimizer package.

OptimizerError
├── BudgetExceeded      --max-calls / --max-tokens reached; the run stops cleanly
├── LLMCallError        an endpoint kept failing (after backoff) or rejected a request
│   ├── TransientLLMError   429 / 5xx / connection trouble: worth retrying
│   └── RequestRejected     another 4xx: retrying the same request will not help
├── QueryFileError      a --queries file that cannot be read or holds no queries
└── RunStateError       a run directory that is missing or inconsistent (resume)
"""

from __future__ import annotations


class OptimizerError(Exception):
    """Base class for optimizer errors."""


class BudgetExceeded(OptimizerError):
    """The call or token budget is used up."""


class LLMCallError(OptimizerError):
    """A call to an LLM endpoint failed."""


class TransientLLMError(LLMCallError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(LLMCallError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class QueryFileError(OptimizerError, ValueError):
    pass


class RunStateError(OptimizerError):
    pass
