"""Turn taking between two pytest sessions, round by round: how the regression gate times base and
head so that the machine's slow spells hit both alike.

On the 2-core VM the gate was calibrated on, a benchmark's rounds switch between two speeds (e.g. a
28 ms step runs at 55 ms for seconds at a time, then recovers), so whole sessions run one after the
other landed 30-40% apart on an unchanged tree. ``scripts/bench_gate.py`` therefore starts base and
head together, pinned to the same core, joined by two pipes (``MTCORE_TURNS=IN_FD,OUT_FD``): only the
session holding the turn runs; before each timed round it hands the turn over and waits for it back.
Everything else a session does (imports, collection, compiles, warm-up calls) happens inside its own
turns, while the partner sleeps, so it never overlaps a timed round of the other.

Stdlib only and self-contained: it belongs to the benches harness, which the gate copies into both
trees, not to ``mtcore/``, which differs between them.
"""

from __future__ import annotations

import os
import select

ENV = "MTCORE_TURNS"
# A partner silent this long is taken as gone (a crash that left the pipe open): run alone.
TIMEOUT_S = 900.0
_READY, _TURN = b"r", b"t"


def connect() -> tuple[list[tuple[str, tuple[int, int]]], list[int]]:
    """The pipes between two sessions: for each, its ``MTCORE_TURNS`` value and the two descriptors
    to pass it; the first session holds the first turn. Returns those and all four descriptors,
    which the caller closes once both sessions have started (then a session sees its partner
    finish as end of file)."""
    first_in, to_first = os.pipe()
    second_in, to_second = os.pipe()
    os.write(to_first, _TURN)
    ends = ((first_in, to_second), (second_in, to_first))
    return [(f"{inbox},{outbox}", (inbox, outbox)) for inbox, outbox in ends], [first_in, to_first, second_in, to_second]


class Turns:
    """Without ``MTCORE_TURNS`` every call returns at once. A partner that has finished (end of file)
    or stays silent past ``TIMEOUT_S`` leaves this session to run alone."""

    def __init__(self, spec: str | None = None):
        self.inbox: int | None = None
        self.outbox: int | None = None
        spec = os.environ.get(ENV) if spec is None else spec
        if spec:
            self.inbox, self.outbox = (int(fd) for fd in spec.split(","))

    @property
    def paired(self) -> bool:
        return self.outbox is not None

    def start(self) -> None:
        """Before any work of this session: tell the partner it is ready, then wait until the partner
        is ready too (so its start-up does not overlap this session's work) and the turn is ours
        (the gate gives the first one)."""
        if not self.paired:
            return
        self._send(_READY)
        seen: set[bytes] = set()
        while self.paired and not {_READY, _TURN} <= seen:
            byte = self._receive()
            if byte is not None:
                seen.add(byte)

    def swap(self) -> None:
        """Hand the turn to the partner and wait for it back: called between timed rounds."""
        if not self.paired:
            return
        self._send(_TURN)
        self._receive()

    def before_round(self, fn):
        """pytest-benchmark's ``setup`` for the rounds of ``fn``: hand the turn over, then, while
        paired, one untimed call of ``fn``. The partner's round has just run on this core; the extra
        call makes the timed round follow a call of its own, caches warm, as one training step
        follows another, instead of paying for the partner's work."""

        def setup() -> None:
            self.swap()
            if self.paired:
                fn()

        return setup

    def finish(self) -> None:
        """This session is done: the partner's next wait ends at once (end of file)."""
        self._alone()

    def _send(self, byte: bytes) -> None:
        try:
            os.write(self.outbox, byte)
        except OSError:  # the partner has exited
            self._alone()

    def _receive(self) -> bytes | None:
        ready, _, _ = select.select([self.inbox], [], [], TIMEOUT_S)
        byte = os.read(self.inbox, 1) if ready else b""
        if not byte:
            self._alone()
            return None
        return byte

    def _alone(self) -> None:
        for fd in (self.inbox, self.outbox):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.inbox = self.outbox = None
