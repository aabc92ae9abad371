"""Which worker slots hold a ready worker, shared by the master and every worker.

`/ping` must say 200 only when every worker has loaded the model, and a dead worker must turn
it back to 503 until its replacement is ready. The master owns the slot bookkeeping (`SlotBook`,
touched only in gunicorn's pre_fork and child_exit hooks, both in the master's main thread);
the readiness flags live in anonymous shared memory (`ReadyTable`) created before the first
fork, written by a worker when it is ready and cleared by the master when it reaps one.
"""

from __future__ import annotations

import mmap
import os

_WORD = 8


class ReadyTable:
    """One 64-bit word per worker slot in MAP_SHARED memory: the ready worker's pid, or 0.

    Aligned 8-byte stores are atomic on the platforms gunicorn runs on, so readers never see
    a torn value; a reader may see a state a few microseconds old, which /ping tolerates.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        # One word per slot, then the sticky "was ready once" word.
        self._memory = mmap.mmap(-1, (slots + 1) * _WORD)  # anonymous and shared across fork
        words = memoryview(self._memory).cast("q")
        self._words = words[:slots]
        self._served = words[slots:]
        self.slots = slots

    def mark_ready(self, slot: int, pid: int | None = None) -> None:
        """Record that the worker in `slot` (this process by default) can serve; the first
        time every slot is ready, also that the server has been ready (`was_ready`)."""
        self._words[slot] = os.getpid() if pid is None else pid
        # Two workers finishing together both see every slot set; either write is the same.
        if all(self._words):
            self._served[0] = 1

    def was_ready(self) -> bool:
        """True once every slot has held a ready worker at the same time (never reset): a
        stop signal before that stops a server still starting, not one that served."""
        return bool(self._served[0])

    def clear(self, slot: int) -> None:
        """Record that `slot` has no ready worker."""
        self._words[slot] = 0

    def ready_pids(self) -> list[int]:
        """The pids of the ready workers, by slot (0 for a slot without one)."""
        return list(self._words)

    def all_ready(self) -> bool:
        """True when every slot holds a ready worker."""
        return all(self._words)


class SlotBook:
    """Master-side map from gunicorn worker age (unique per fork) to readiness slot."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._by_age: dict[int, int] = {}

    def assign(self, age: int) -> int:
        """Give the worker about to be forked the lowest free slot.

        Raises RuntimeError if every slot is taken (more live workers than configured).
        """
        taken = set(self._by_age.values())
        for slot in range(self.slots):
            if slot not in taken:
                self._by_age[age] = slot
                return slot
        raise RuntimeError(f"all {self.slots} worker slots are taken")

    def slot_of(self, age: int) -> int | None:
        """The slot of the worker of this age, if it has one."""
        return self._by_age.get(age)

    def release(self, age: int) -> int | None:
        """Free the slot of a worker that exited; returns it (None if it had none)."""
        return self._by_age.pop(age, None)
