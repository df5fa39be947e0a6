"""A stand-in backend for the data-parallel tests (imported by module name in spawned worker processes).

Each token t (after the first) scores log p = -log(1 + t); a document holding token 999999 kills its worker; the
kwarg ``fail_on`` names a CUDA_VISIBLE_DEVICES value whose engine fails to start; ``trace_dir`` records which
worker scored which documents (one line per document: its first token); ``linger`` leaves a thread behind at close
that keeps the worker's interpreter from exiting (as a library's leftover thread would). With ``top_k``: ids
t .. t+k-1 at the token's own log-probability."""
from __future__ import annotations

import math
import os
from pathlib import Path

from harness.backends.base import Backend, DocResult

KILL_TOKEN = 999999


class EchoBackend(Backend):
    name = "echo"

    def __init__(self, spec):
        super().__init__(spec)
        self.devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if spec.engine_kwargs.get("fail_on") == self.devices:
            raise RuntimeError(f"CUDA out of memory on {self.devices}")
        self.closed = False

    def loglikelihood_rolling(self, docs, progress=None, token_logprobs=False, top_k=0):
        trace = self.spec.engine_kwargs.get("trace_dir")
        out = []
        for d in docs:
            if KILL_TOKEN in d:
                os._exit(3)
            if trace:
                with open(Path(trace) / f"gpu{self.devices.replace(',', '-')}.txt", "a") as f:
                    f.write(f"{d[0]}\n")
            lps = [-math.log1p(t) for t in d[1:]]
            top = None
            if top_k:  # top-k "distributions": ids t, t+1, ... with the token's own log-probability
                import numpy as np

                top = np.asarray([[t + j for j in range(top_k)] for t in d[1:]], dtype=np.int64).reshape(-1, top_k)
            out.append(DocResult(logprob_sum=sum(lps), n_tokens=len(d) - 1,
                                 token_logprobs=lps if token_logprobs or top_k else None, top_ids=top,
                                 top_logprobs=None if top is None else np.repeat(
                                     np.asarray(lps, dtype=np.float32)[:, None], top_k, axis=1)))
        return out

    def close(self):
        if self.spec.engine_kwargs.get("linger"):
            import threading

            threading.Thread(target=threading.Event().wait, name="linger").start()  # not a daemon: never ends

    def info(self):
        return {"backend": self.name, "device": f"fake:{self.devices}", "kernel": "dense bf16", "pid": os.getpid(),
                "engine_start_s": 0.1}
