"""One scoring engine alive at a time: the rule the gate keeps for GPU memory."""
from __future__ import annotations


class EngineManager:
    """Holds at most one scoring engine; asking for another closes (and frees) the current one first.

    The rule holds across managers too (one per GateSession): a manager that starts an engine first closes the
    engine of whichever manager holds one, so a process never has two engines on the GPU.
    """

    _holder: "EngineManager | None" = None  # the manager whose engine is alive, process-wide

    def __init__(self, log=print):
        self.current = None
        self.key: tuple | None = None
        self.log = log
        self.opened: list[tuple] = []   # history, so tests can check which engines a run started

    def get(self, key: tuple, make):
        if self.key == key and self.current is not None:
            return self.current
        self.close()
        other = EngineManager._holder
        if other is not None and other is not self:
            other.close()
        self.log(f"starting engine {key}")
        self.current = make()
        self.key = key
        self.opened.append(key)
        EngineManager._holder = self
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.log(f"closing engine {self.key}")
            try:
                self.current.close()
            finally:
                self.current, self.key = None, None
                if EngineManager._holder is self:
                    EngineManager._holder = None
