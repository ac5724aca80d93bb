"""The compression pipeline: ``run(spec, on_event, should_stop) -> RunResult``."""

from compression.pipeline.run import REJECTED, SUCCEEDED, RunResult, run

__all__ = ["REJECTED", "SUCCEEDED", "RunResult", "run"]
