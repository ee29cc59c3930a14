"""A training run's life: its options (``options``), the preparation every framework shares
(``prepare``), the trainer (``trainer``), the launcher (``launch``), the entry points ``train`` and
``compare`` (``run``), and the report: the run folders read and their statistics (``runs``), the
plots (``plots``) and ``report.md`` (``report``)."""

from mtcore.train.options import RunConfig
from mtcore.train.prepare import Prepared, prepare
from mtcore.train.run import compare, train
from mtcore.train.trainer import NonFiniteLoss, Trainer

__all__ = ["NonFiniteLoss", "Prepared", "RunConfig", "Trainer", "compare", "prepare", "train"]
