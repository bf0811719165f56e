"""The pilot's ``SFTConfig``: TRL's, with ``ddp_timeout`` raised to :data:`PILOT_DDP_TIMEOUT`.

Under ``accelerate launch`` the processes evaluate students in parallel and meet after each round; a process that
finished its evaluation waits for the slowest one, which with a large student and held-out set can take longer
than the 30 minutes of TRL's default (the job would abort). Set ``ddp_timeout`` to change it. Apart from the
pilot's other options (:mod:`car_hf.evaluation.pilot_args`) because it imports TRL (and torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

PILOT_DDP_TIMEOUT = 6 * 3600
"""Seconds a process may wait for the others (one evaluation of a student, the longest single step)."""


@dataclass
class PilotSFTConfig(SFTConfig):
    """``trl.SFTConfig`` with a longer ``ddp_timeout`` (see the module's docstring)."""

    ddp_timeout: int = field(
        default=PILOT_DDP_TIMEOUT, metadata={"help": "Seconds a process may wait for the others: at least the longest "
                                                     "evaluation of one student (default 6 hours)."})
