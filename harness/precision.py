"""The precisions a gate scores, named once: the BF16 reference and the quantized model under test (named for its
format). A StrEnum: each member is its name as a string, as configs (``model.engine.<precision>``), report.json's
keys, engine keys and the CLI's ``--precision`` spell it."""
from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    BF16 = "bf16"    # the reference: the model as published
    NVFP4 = "nvfp4"  # the quantized checkpoint under test

    def __repr__(self) -> str:  # as the string it is: an engine key logs ('hf', 'nvfp4', ...)
        return repr(self.value)


BF16, NVFP4 = Precision.BF16, Precision.NVFP4
PRECISIONS = tuple(p.value for p in Precision)
