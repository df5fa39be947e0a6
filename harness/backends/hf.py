"""transformers backend: the CPU path and a numerical cross-check of vLLM.

Loads BF16 checkpoints and compressed-tensors NVFP4 checkpoints alike (compressed-tensors wraps each quantized
Linear's forward, so on this backend NVFP4 means W4A4 fake quantization: weights and activations quantized).
Quantized checkpoints must run in bf16; float32 input fails inside compressed-tensors.
"""
from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

from harness.backends.base import Backend, DocResult, EngineSpec, check_results
from harness.backends.engine_args import check_engine_kwargs
from harness.backends.fake_quant import attach, reference_activations
from harness.checkpoint import checkpoint_quantization, dequantized_weights, describe_quantization, view_source
from harness.errors import BackendError, ConfigError
from harness.tasks.definitions import cut_at_stop


@contextlib.contextmanager
def without_progress_bars():
    """Hold back what libraries write to stderr meanwhile, then pass on every line that is not a progress bar."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        for line in re.split(r"[\r\n]+", buf.getvalue()):
            if line.strip() and not PROGRESS_BAR.search(line):
                print(line, file=sys.stderr)


PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\d+/\d+ \[\d")


class HFBackend(Backend):
    name = "hf"

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        check_engine_kwargs("hf", spec.engine_kwargs, where="hf backend")
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        kw = spec.engine_kwargs
        if kw.get("threads"):
            torch.set_num_threads(int(kw["threads"]))
        self.device = kw.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = kw.get("dtype", "bfloat16")
        self.dtype = getattr(torch, dtype_name, None)
        if not isinstance(self.dtype, torch.dtype):
            raise ConfigError(f"hf backend: unknown dtype {dtype_name!r}; use bfloat16, float16 or float32")
        # padded tokens per forward: a batch is as long as its longest text, so on a CPU, where every padded position
        # costs its full share of bf16 matrix work, smaller batches of similar lengths waste less (WikiText's texts run
        # from 16 to 500 tokens: 16384 padded 4x more positions than it scored)
        self.batch_tokens = int(kw.get("batch_tokens", 16384 if self.device.startswith("cuda") else 2048))
        from harness.backends.cpu_matmul import DEFAULT, widen_linears

        self.cpu_matmul = kw.get("cpu_matmul", DEFAULT)
        t0 = time.time()

        extra = {"attn_implementation": kw["attn_implementation"]} if kw.get("attn_implementation") else {}
        self._converted = None
        with without_progress_bars():  # compressed-tensors' per-step bars; its warnings still pass
            try:
                src = view_source(spec.model)
                model = spec.model
                if (src is None and os.path.isdir(model)
                        and checkpoint_quantization(model).get("quant_method") == "modelopt"):
                    self._converted = tempfile.TemporaryDirectory(prefix="harness-modelopt-")
                    model = modelopt_as_compressed_tensors(model, self._converted.name)
                if src is not None:
                    self.model = load_view(spec.model, src, self.dtype, extra)
                else:
                    self.model = AutoModelForCausalLM.from_pretrained(
                        model, revision=spec.revision, dtype=self.dtype,
                        trust_remote_code=bool(kw.get("trust_remote_code", False)), **extra)
            except (OSError, ValueError) as e:
                raise BackendError(f"hf backend: cannot load {spec.model!r}: {str(e)[:500]}") from None
            self.model.to(self.device).eval()

            ref = reference_activations(spec.model)  # a W4A4 reference model (harness/reference/nvfp4.py)
            self.reference_w4a4 = attach(self.model, *ref) if ref else 0
            self.widened = widen_linears(self.model, self.cpu_matmul, self.device, self.dtype)  # bf16 in fp32 on CPUs
            if self.device == "cpu":
                from harness.backends.cpu_fp4 import register

                register()  # compressed-tensors' FP4 rounding of CPU tensors, the same bits at half the cost
            with torch.inference_mode():  # a compressed checkpoint decompresses on its first forward: part of the load
                self.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device))
        self.load_s = time.time() - t0
        self.quant = quantization_info(self.model.config)

    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], progress=None,
                              token_logprobs: bool = False, top_k: int = 0) -> list[DocResult]:
        import torch

        vocab = self.model.config.get_text_config().vocab_size
        if top_k > vocab:
            raise ConfigError(f"distributions.top_k {top_k} is above the vocabulary size {vocab}")
        token_logprobs = token_logprobs or bool(top_k)

        order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
        results: list[DocResult | None] = [None] * len(docs)
        bs_cap = self.spec.batch_size
        i = 0
        done = 0
        with torch.inference_mode():
            while i < len(order):
                longest = len(docs[order[i]])
                n = max(1, self.batch_tokens // max(longest, 1))
                if bs_cap:
                    n = min(n, bs_cap)
                batch = order[i : i + n]
                i += n
                ids = torch.zeros((len(batch), longest), dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for r, j in enumerate(batch):
                    d = docs[j]
                    ids[r, : len(d)] = torch.tensor(list(d), dtype=torch.long)
                    mask[r, : len(d)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                tok_lp, top_lp, top_ids = token_logprobs_chunked(logits, ids, top_k=top_k)
                tok_lp = tok_lp * mask[:, 1:]
                sums = tok_lp.sum(-1).double().cpu().tolist()
                per_tok = tok_lp.cpu().tolist() if token_logprobs else None
                if top_k:
                    top_lp, top_ids = top_lp.cpu().numpy(), top_ids.cpu().numpy()
                for r, j in enumerate(batch):
                    n = len(docs[j]) - 1
                    results[j] = DocResult(logprob_sum=sums[r], n_tokens=n,
                                           token_logprobs=per_tok[r][:n] if per_tok is not None else None,
                                           top_ids=top_ids[r, :n] if top_k else None,
                                           top_logprobs=top_lp[r, :n] if top_k else None)
                done += len(batch)
                if progress:
                    progress(done, len(docs))
                del logits, tok_lp, top_lp, top_ids
        return check_results(results, docs, self.name)  # type: ignore[arg-type]

    def generate_until(self, prompts: Sequence[Sequence[int]], until: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy, one prompt at a time (no padding to reason about: the CPU path and the cross-check), stopping at
        the first of ``until`` (transformers' stop_strings) or after ``max_tokens`` new tokens."""
        import torch


        tok = self._generation_tokenizer()
        out = []
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([list(p)], dtype=torch.long, device=self.device)
                gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_tokens, stop_strings=list(until), tokenizer=tok,
                                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                          else tok.eos_token_id)
                out.append(cut_at_stop(tok.decode(gen[0, len(p):].tolist(), skip_special_tokens=True), until))
        return out

    def _generation_tokenizer(self):
        if getattr(self, "_tok", None) is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.spec.tokenizer or self.spec.model)
        return self._tok

    def info(self) -> dict:
        import torch
        import transformers

        dev = torch.cuda.get_device_name(0) if self.device.startswith("cuda") else "cpu"
        return {"backend": self.name, "device": dev, "dtype": str(self.dtype).replace("torch.", ""),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             **_maybe_version("compressed-tensors")},
                "kernel": ("reference NVFP4 W4A4 (harness/reference/nvfp4.py + fake_quant.py)" if self.reference_w4a4
                           else self.quant.get("kernel_hf", "dense")), "quantization": self.quant,
                "engine_kwargs": dict(self.spec.engine_kwargs), "batch_size": self.spec.batch_size,
                "cpu_matmul": "fp32" if self.widened else None,
                "engine_start_s": round(self.load_s, 3)}

    def close(self) -> None:
        if getattr(self, "_converted", None) is not None:
            self._converted.cleanup()
            self._converted = None
        if getattr(self, "model", None) is None:
            return
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def modelopt_as_compressed_tensors(src: str, out: str) -> str:
    """A ModelOpt NVFP4 checkpoint in compressed-tensors' layout (its own converter: reciprocal global scales,
    renamed tensors), which transformers then runs as W4A4 fake quantization. Modules without FP4 weights stay."""
    from compressed_tensors.entrypoints.convert.convert_checkpoint import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter
    from loguru import logger
    from safetensors import safe_open

    names = set()
    for f in sorted(Path(src).glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            names.update(fh.keys())

    quantized = {n.rpartition(".")[0] for n in names if n.endswith(".weight_scale_2")}
    # what the checkpoint says it left out (lm_head, also when tied and so not stored) and what holds no FP4 weights
    ignore = sorted(set(checkpoint_quantization(src).get("ignore") or []) |
                    ({n.rpartition(".")[0] for n in names if n.endswith(".weight")} - quantized))
    logger.disable("compressed_tensors")  # its per-file progress lines
    convert_checkpoint(src, out, converter=ModelOptNvfp4Converter(ignore=ignore, targets=["Linear"]), device="cpu")
    return out


def load_view(model_dir: str, src, dtype, extra: dict):
    """A BF16 view (harness_view.json): the model built from its config, with ``src``'s weights dequantized."""
    from transformers import AutoConfig, AutoModelForCausalLM


    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype, **extra)
    missing, unexpected = model.load_state_dict(dict(dequantized_weights(src)), strict=False)
    tied = {"lm_head.weight"} if model.config.get_text_config().tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"view of {src}: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.tie_weights()
    return model


def _maybe_version(pkg: str) -> dict:
    try:
        return {pkg: version(pkg)}
    except PackageNotFoundError:
        return {}


def quantization_info(config) -> dict:
    """Summarise a model config's compressed-tensors quantization (format, bits, activation quantization)."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return {}
    qd = qc if isinstance(qc, dict) else (qc.to_dict() if hasattr(qc, "to_dict") else vars(qc))

    out = describe_quantization(qd)
    if out.get("activation_bits"):
        out["kernel_hf"] = "hf-fake-quant W4A4" if out.get("weight_bits") == 4 else "hf-fake-quant"
    else:
        out["kernel_hf"] = "hf-fake-quant weight-only"
    return out


LOGSOFTMAX_CHUNK = 256  # positions per fp32 step: 256 x 152k vocab x 4 B = 0.16 GB (twice that with logsumexp)


def token_logprobs_chunked(logits, ids, chunk: int = LOGSOFTMAX_CHUNK, top_k: int = 0):
    """log p(ids[:, t+1] | ...) for every position t, in fp32, from [batch, T, vocab] logits in their own dtype; with
    ``top_k``, also the top-k log-probabilities and token ids at every position (best first), else None for both.

    Computed as logit[token] - logsumexp(logits) over ``chunk`` positions at a time, so the fp32 working set is
    ``chunk x vocab`` instead of a full fp32 log_softmax of every position (about 20 GB at 16k tokens x 152k vocab)."""
    import torch

    b, t, _ = logits.shape
    out = torch.empty((b, t - 1), dtype=torch.float32, device=logits.device)
    top_lp = torch.empty((b, t - 1, top_k), dtype=torch.float32, device=logits.device) if top_k else None
    top_ids = torch.empty((b, t - 1, top_k), dtype=torch.long, device=logits.device) if top_k else None
    for r in range(b):
        for lo in range(0, t - 1, chunk):  # views of the logits; only the chunk is copied to fp32
            hi = min(lo + chunk, t - 1)
            part = logits[r, lo:hi].float()
            norm = torch.logsumexp(part, -1)
            out[r, lo:hi] = part.gather(-1, ids[r, lo + 1 : hi + 1, None]).squeeze(-1) - norm
            if top_k:
                vals, idx = torch.topk(part, top_k, dim=-1)
                top_lp[r, lo:hi] = vals - norm[:, None]
                top_ids[r, lo:hi] = idx
    return out, top_lp, top_ids
