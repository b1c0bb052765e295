"""referee: reward and verifier services over gRPC, and an RL trainer that uses them.

The names a verifier author needs are importable from here:

    from referee import Result, Sample, Status, InvalidInput, verifier
"""

from referee.types import InvalidInput, InvalidParams, Result, Sample, Score, Status
from referee.verifier import Param, Verifier, verifier

__all__ = [
    "InvalidInput",
    "InvalidParams",
    "Param",
    "Result",
    "Sample",
    "Score",
    "Status",
    "Verifier",
    "verifier",
]
__version__ = "0.1.0"
