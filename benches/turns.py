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
import struct
import zlib

ENV = "MTCORE_TURNS"
# A partner silent this long is taken as gone (a crash that left the pipe open): run alone.
TIMEOUT_S = 900.0
_READY, _TURN, _COUNT = b"r", b"t", b"c"
_COUNT_BODY = struct.Struct("<II")  # the case's key (a CRC of its name), its rounds


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
        self._partner_count: tuple[int, int] | None = None  # (key, rounds) the partner sent with a turn
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
        seen: set[bytes] = set()  # a count (the partner's first case) is a turn too
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

    def agree(self, case: str, rounds: int) -> int:
        """The rounds both sessions time ``case`` for: the larger of the two counts each calibrated
        from its own warm-up. Without it a slower side would time fewer rounds than the faster one
        and the rest of the faster side's rounds would alternate with the next case's. Called by
        each session in its turn, after its warm-up: the count goes over with the turn. A partner
        that reached another case keeps each side's own count: after a case only one side has, the
        two stay out of step (each its own counts) for the rest of the session."""
        if not self.paired:
            return rounds
        key = zlib.crc32(case.encode())
        theirs, self._partner_count = self._partner_count, None
        if theirs is not None and theirs[0] != key:
            theirs = None  # a count for a case this session does not time now: out of step, first here
        self._send(_COUNT + _COUNT_BODY.pack(key, rounds))
        if theirs is None:  # here first: the partner's count comes back with the turn
            self._receive()
            theirs, self._partner_count = self._partner_count, None
        else:  # here second: the partner is waiting for the turn this message gave it; wait for it back
            self._receive()
        return max(rounds, theirs[1]) if theirs is not None and theirs[0] == key else rounds

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
        """The partner's next message. A count (``agree``) hands the turn over as ``_TURN`` does,
        and is kept for this session's ``agree``. Alone (the partner gone), nothing."""
        if not self.paired:
            return None
        ready, _, _ = select.select([self.inbox], [], [], TIMEOUT_S)
        byte = os.read(self.inbox, 1) if ready else b""
        if byte == _COUNT:
            body = os.read(self.inbox, _COUNT_BODY.size)  # written with its tag in one write: there already
            if len(body) == _COUNT_BODY.size:
                self._partner_count = _COUNT_BODY.unpack(body)
                return _TURN
            byte = b""
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
