"""Quantization step: llm-compressor ``oneshot`` -> compressed-tensors checkpoint.

Runs in its own interpreter, because vLLM and llm-compressor pin conflicting compressed-tensors versions:

    python -m harness.quant.quantize --spec spec.json

The parent (``run_quantization``) writes the spec, starts the quantization interpreter (``--quant-python`` /
``HARNESS_QUANT_PYTHON``, extra ``PYTHONPATH`` via ``--quant-pythonpath`` / ``HARNESS_QUANT_PYTHONPATH``), and
moves the finished checkpoint into the content-addressed cache only when the child succeeded (``harness.quant.cache``).
This module imports nothing heavy at import time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.childproc import child_pythonpath, guard_group, run_child
from harness.config.sections import CalibrationSpec  # the one calibration spec: config, recipes and this child
from harness.data.files import load_rows
from harness.data.rules import messages_to_text
from harness.errors import HarnessError
from harness.quant import zygote_client
from harness.recipes.catalog import recipe_id

SPEC_VERSION = 1
MARKER = "harness_quantization.json"


@dataclass
class QuantSpec:
    model: str                     # hub id or local dir
    recipe: str                    # llm-compressor recipe YAML text
    calibration: CalibrationSpec
    output_dir: str
    revision: str | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    offline: bool = False
    device_map: str | None = None  # None: the whole BF16 model in CPU RAM; "auto_offload": CPU RAM, the rest on disk
    cpu_matmul: str = "fp32"       # bf16 linears and matmuls of calibration on a CPU: in float32 (backends/cpu_matmul.py)
    spec_version: int = SPEC_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> "QuantSpec":
        d = json.loads(text)
        d["calibration"] = CalibrationSpec(**d["calibration"])
        return cls(**d)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "calibration": self.calibration.model_dump()}

    def beside(self, suffix: str) -> Path:
        """A path next to the output dir (``.spec.json``, ``.offload``): the names ckpt_cache clears after a crash."""
        out = Path(self.output_dir)
        return out.with_name(out.name + suffix)


def calibration_texts(spec: QuantSpec, tokenizer) -> list[str]:
    """Calibration rows as text: chat template where the tokenizer has one, else one `role: content` line a message."""
    c = spec.calibration
    rows = load_rows(c.path, name=c.name, split=c.split, revision=c.revision, data_files=c.data_files)
    if c.skip:
        rows = rows.select(range(min(c.skip, len(rows)), len(rows)))
    rows = rows.shuffle(seed=c.seed).select(range(min(c.samples, len(rows))))
    out = []
    for row in rows:
        if c.text_field == "messages":
            msgs = row["messages"]
            if getattr(tokenizer, "chat_template", None):
                out.append(tokenizer.apply_chat_template(msgs, tokenize=False))
            else:
                out.append(messages_to_text(msgs))
        else:
            out.append(row[c.text_field])
    return [t for t in out if t.strip()]


def run_oneshot(spec: QuantSpec, log=print) -> dict:
    """In-process quantization (this is what the child interpreter runs)."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(spec.tokenizer or spec.model, revision=spec.revision,
                                        trust_remote_code=spec.trust_remote_code)
    load = dict(revision=spec.revision, dtype=torch.bfloat16, trust_remote_code=spec.trust_remote_code)
    offload_dir = spec.beside(".offload")
    if spec.device_map:
        # llm-compressor's way for models bigger than RAM: accelerate places what fits (GPUs with "auto", CPU RAM
        # with "auto_offload") and the rest on disk; compressed-tensors' offloading then onloads one module at a time
        from compressed_tensors.offload import load_offloaded_model

        with load_offloaded_model(AutoModelForCausalLM):
            model = AutoModelForCausalLM.from_pretrained(spec.model, device_map=spec.device_map,
                                                         offload_folder=str(offload_dir), **load)
        log(f"loaded with device_map={spec.device_map} (disk offload in {offload_dir})")
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.model, **load)
    texts = calibration_texts(spec, tok)
    if not texts:
        raise HarnessError(f"calibration dataset {spec.calibration.path!r} split {spec.calibration.split!r} gave no text")
    c = spec.calibration
    enc = tok(texts, max_length=c.max_seq_len, truncation=True, add_special_tokens=False)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    log(f"calibration: {len(ds)} samples, max_seq_len {c.max_seq_len}, seed {c.seed}")
    torch.manual_seed(c.seed)
    from harness.backends.cpu_fp4 import register
    from harness.backends.cpu_matmul import fp32_cpu_matmuls

    register()  # FP4 rounding of CPU tensors (calibration's fake quantization, compression): the same bits, faster
    with fp32_cpu_matmuls(spec.cpu_matmul) as widened:
        oneshot(model=model, dataset=ds, recipe=spec.recipe, max_seq_length=c.max_seq_len,
                num_calibration_samples=len(ds), pipeline="basic" if spec.extra.get("basic_pipeline") else "independent")
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
    shutil.rmtree(offload_dir, ignore_errors=True)
    info = {"quantize_s": round(time.time() - t0, 2), "calibration_samples": len(ds), "versions": quant_versions(),
            "cpu_matmul": {"setting": spec.cpu_matmul, "widened_calls": widened["widened"]}}
    (out / MARKER).write_text(json.dumps({"spec": spec.to_dict(), **info}, indent=1) + "\n")
    return info


def quant_versions() -> dict:
    out = {}
    for pkg in ("llmcompressor", "compressed-tensors", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class QuantInterpreter:
    """Which Python runs llm-compressor, with what extra import path."""

    python: str = sys.executable
    pythonpath: str | None = None

    @classmethod
    def from_env(cls, python: str | None = None, pythonpath: str | None = None) -> "QuantInterpreter":
        return cls(python=python or os.environ.get("HARNESS_QUANT_PYTHON") or sys.executable,
                   pythonpath=pythonpath if pythonpath is not None else os.environ.get("HARNESS_QUANT_PYTHONPATH"))

    def env(self) -> dict:
        env = dict(os.environ)
        # the quantization interpreter gets its own path: the caller's PYTHONPATH may hold vLLM's compressed-tensors
        env["PYTHONPATH"] = child_pythonpath(self.pythonpath)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def describe(self) -> str:
        return f"{self.python}" + (f" (PYTHONPATH={self.pythonpath})" if self.pythonpath else "")


def run_quantization(spec: QuantSpec, interp: QuantInterpreter, log_path: Path, log=print,
                     timeout_s: float | None = None, heartbeat_s: float = 60.0) -> dict:
    """Run ``python -m harness.quant.quantize`` in the quantization interpreter; raise HarnessError on any failure. The
    child dies with this process (harness/childproc.py), says how far it got every ``heartbeat_s`` and is stopped
    past ``timeout_s``."""
    spec_path = spec.beside(".spec.json")
    spec_path.write_text(json.dumps(spec.to_dict(), indent=1))
    cmd = [interp.python, "-m", "harness.quant.quantize", "--spec", str(spec_path)]
    log(f"quantizing {spec.model} in {interp.describe()}; log: {log_path}")
    t0, rc = time.time(), None
    env = interp.env()
    try:
        rc = run_child(cmd, env, log_path, f"quantizing {Path(spec.model).name}", timeout_s=timeout_s,
                       heartbeat_s=heartbeat_s, log=log, start=zygote_client.spawner(interp.python, env, spec_path,
                                                                                     Path(log_path)))
    except FileNotFoundError as e:
        raise HarnessError(
            f"quantization interpreter not found: {interp.python!r} ({e.strerror}). Set --quant-python / "
            "HARNESS_QUANT_PYTHON to a Python that has llmcompressor installed."
        ) from None
    finally:
        spec_path.unlink(missing_ok=True)
        note_in_ledger(spec, interp, rc, time.time() - t0)
    if rc != 0:
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-25:])
        how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        raise HarnessError(
            f"quantization failed ({how}) in {interp.describe()}; log: {log_path}\n--- last lines ---\n{tail}"
            + ("\n(killed by the kernel: most likely out of CPU memory; see docs/scale.md 'Quantization memory')"
               if rc == -9 and "Traceback" not in tail else "")
        )
    marker = Path(spec.output_dir) / MARKER
    if not marker.exists():
        raise HarnessError(f"quantization exited 0 but wrote no {MARKER} in {spec.output_dir}; log: {log_path}")
    return json.loads(marker.read_text())


LEDGER_ENV = "HARNESS_QUANT_LEDGER"


def note_in_ledger(spec: QuantSpec, interp: "QuantInterpreter", rc: int | None, seconds: float) -> None:
    """With ``$HARNESS_QUANT_LEDGER`` set (a file path): one JSON line per quantization child started, whatever its end
    (``rc`` None: it never ran or was interrupted). CI counts them (.ci/run); the pytest test that asked is named."""
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return

    line = {"model": spec.model, "recipe_sha256": recipe_id(spec.recipe),
            "python": interp.python, "device_map": spec.device_map,
            "calibration": spec.calibration.model_dump(), "rc": rc, "seconds": round(seconds, 1),
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0] or None, "pid": os.getpid()}
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: appends from several processes interleave whole
        f.write(json.dumps(line, sort_keys=True) + "\n")


def read_ledger(path) -> list[dict]:
    p = Path(path)
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.exists() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.quant.quantize",
                                description="Run one llm-compressor oneshot from a spec file.")
    p.add_argument("--spec", required=True, type=Path, help="JSON spec written by harness (QuantSpec)")
    a = p.parse_args(argv)

    guard_group()  # the harness that started us is gone: so are we, with anything we started
    spec = QuantSpec.from_json(a.spec.read_text())
    info = run_oneshot(spec)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
