"""One exception hierarchy for the library; the service maps it to exit and status codes."""

__all__ = ["TpetError", "InvalidInput", "Cancelled", "StageFailed"]


class TpetError(Exception):
    """Base of every error the library raises on purpose."""


class InvalidInput(TpetError):
    """The user's input (spec, data, checkpoint) is wrong; every problem is listed."""

    def __init__(self, problems: list[str] | str, context: str = "invalid input"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.context = context
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{context}:\n{lines}")


class Cancelled(TpetError):
    """The caller asked to stop (``should_stop`` returned True)."""


class StageFailed(TpetError):
    """A stage could not complete for a reason other than bad input (e.g. a parity check)."""

    def __init__(self, stage: str, reason: str):
        self.stage = stage
        self.reason = reason
        super().__init__(f"stage {stage!r} failed: {reason}")
