"""Domain errors every service raises; the shared HTTP layer maps them to 4xx responses.

Each names the offending field and the reason, so a campaign office's client can point
at the exact input to fix.
"""


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self):
        # Whatever a subclass's __init__ takes: errors travel pickled from worker processes
        # (services.plumbing.offload).
        return _rebuild, (self.__class__, self.args, self.__dict__)


def _rebuild(cls, args, state):
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class RuleViolation(DomainError, ValueError):
    """The input breaks a business rule (422)."""
    status = 422
    code = "validation_error"


class UnknownReference(DomainError, LookupError):
    """The input refers to something that does not exist (404 for a path, 422 for a body field)."""
    status = 404
    code = "not_found"


class StateConflict(DomainError):
    """The request clashes with the current state (409), e.g. editing a submitted inspection."""
    status = 409
    code = "conflict"


class PermissionDenied(DomainError):
    status = 403
    code = "forbidden"
