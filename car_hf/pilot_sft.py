"""The pilot's ``SFTConfig``: TRL's, with ``ddp_timeout`` raised to :data:`car_hf.pilot_args.PILOT_DDP_TIMEOUT`
(why: :mod:`car_hf.pilot_args`). Apart from the pilot's other options because it imports TRL (and torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .pilot_args import PILOT_DDP_TIMEOUT


@dataclass
class PilotSFTConfig(SFTConfig):
    """``trl.SFTConfig`` with a longer ``ddp_timeout`` (see :mod:`car_hf.pilot_args`)."""

    ddp_timeout: int = field(
        default=PILOT_DDP_TIMEOUT, metadata={"help": "Seconds a process may wait for the others: at least the longest "
                                                     "evaluation of one student (default 6 hours)."})
