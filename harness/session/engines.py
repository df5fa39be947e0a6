"""One scoring engine alive at a time: the rule the gate keeps for GPU memory."""
from __future__ import annotations

from pathlib import Path

from harness.backends import EngineSpec, make_backend
from harness.checkpoint import check_shards
from harness.errors import HarnessError
from harness.fidelity import check_kernel
from harness.precision import BF16


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


def start_engine(ctx, precision: str, model: str, batch_size: int, on_info):
    """One scoring engine of the run's backend for ``precision`` (``model``: the BF16 model or the checkpoint);
    ``on_info(engine.info())`` once it is up, and a quantized engine whose kernel the config refuses is closed and
    refused now, before a dataset is scored (fidelity.check_kernel)."""
    m = ctx.cfg.model
    if precision == BF16 and Path(model).is_dir():
        check_shards(Path(model))
    spec = EngineSpec(model=model, precision=precision, max_model_len=m.max_model_len, tokenizer=ctx.source.tokenizer,
                      revision=m.revision if precision == BF16 else None,
                      engine_kwargs=ctx.cfg.engine_kwargs(precision, ctx.backend), batch_size=batch_size,
                      top_k=ctx.top_k, fidelity=ctx.cfg.fidelity)
    with ctx.clock("engine_start"):
        eng = make_backend(ctx.backend, spec)
    info = eng.info()
    on_info(info)
    if precision != BF16:
        try:
            check_kernel(info, ctx.cfg.require_kernel)
        except HarnessError:
            eng.close()
            raise
    return eng
