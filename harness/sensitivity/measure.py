"""Which parts of a model NVFP4 hurts: quantize one part at a time (or everything but it) in process, measure the
next-token distributions against BF16 on a small text set, rank, and suggest what to leave in BF16.

How (``harness sensitivity``): the BF16 model is loaded once on the hf backend (the gate's own scoring code). A BF16
pass scores the texts with their top-k next-token distributions and records each Linear's input amax (its activation
calibration). Each variant then swaps the chosen Linears' weights for their NVFP4 fake quantization (quantize, then
dequantize: harness/reference/nvfp4.py with llm-compressor's own bf16 arithmetic and fused global scales, which are bit for
bit what llm-compressor writes) and, for NVFP4 (W4A4), quantizes their inputs as the kernel would
(harness/backends/fake_quant.py); the texts are scored again, and KL / top-1 / PPL are taken against the BF16 pass
exactly as the gate takes them (harness/divergence.py). No checkpoint is written per variant.

Units: ``layer`` (every Linear of one decoder layer), ``type`` (one projection in every layer) or ``linear`` (one
Linear). Linears that NVFP4 fuses (q/k/v and gate/up share one global scale: llm-compressor's FUSED_LAYER_NAMES, in
harness/reference/nvfp4.py) are one unit of a type or linear: llm-compressor refuses a recipe that leaves part of such a group
in BF16 ("Some layers in fused group ... have no weight observer"), so no suggestion may split one. Modes: ``only`` (the default: quantize the unit alone, everything else BF16; the unit's
own harm, free of interactions, as ModelOpt's AutoQuantize scores layers) or ``all-but`` (quantize everything but
the unit: what leaving it in BF16 recovers, interactions included). The suggestion is measured, not predicted: in
ranked order each unit is tried on top of those kept so far, and kept only when the whole model, quantized but for
them, scores higher than without it (a greedy search that never steps down), until the target score is reached.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from harness.backends.fake_quant import fake_quantize
from harness.distributions import from_results
from harness.divergence import token_metrics

UNIT_KINDS = ("layer", "type", "linear")
MODES = ("only", "all-but")
LAYER = re.compile(r"^(?P<prefix>.*\.layers)\.(?P<index>\d+)\.")
NVFP4_BYTES_PER_PARAM = 4.5 / 8  # 4-bit codes plus one 8-bit scale per 16 (the global scale is negligible)


@dataclass
class Unit:
    name: str
    linears: list[str]
    params: int = 0
    index: int | None = None          # the decoder layer's index (units by layer)
    by: str = "linear"                # layer, type or linear (UNIT_KINDS): how ignore_patterns names it


@dataclass
class Measured:
    kld_mean: float
    top1_pct: float
    ppl: float
    score: float                      # PPL_bf16 / PPL x 100
    seconds: float
    quantized: int = 0                # Linears quantized in this variant


@dataclass
class Sensitivity:
    by: str
    mode: str
    scheme: str
    texts: int
    tokens: int
    bf16_ppl: float
    all_quantized: Measured
    rows: list[tuple[Unit, Measured]] = field(default_factory=list)

    def ranked(self) -> list[tuple[Unit, Measured]]:
        """Most harmful first: by KL when a unit alone is quantized, by what is left when all but it are (a unit
        whose BF16 copy recovers most leaves the least KL behind)."""
        if self.mode == "only":
            return sorted(self.rows, key=lambda r: -r[1].kld_mean)
        return sorted(self.rows, key=lambda r: r[1].kld_mean)


def linear_names(model, ignore=("lm_head",)) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rpartition(".")[2] not in ignore]


def fused_key(name: str, names) -> tuple[str, ...]:
    """The Linears that must stay together with ``name`` (its fused group where complete, else itself)."""
    from harness.reference.nvfp4 import fused_group

    return tuple(fused_group(name, names))


def make_units(names: list[str], params: dict[str, int], by: str) -> list[Unit]:
    """Units in depth order; a fused group (q/k/v, gate/up) is one unit of a type or linear, named by its members
    (``q_proj+k_proj+v_proj``; one Linear's full name with the others' leaves after a +)."""
    if by not in UNIT_KINDS:
        raise ValueError(f"unknown unit {by!r}; use one of {', '.join(UNIT_KINDS)}")
    present = set(names)
    groups: dict[str, Unit] = {}
    for n in names:
        members = fused_key(n, present)
        leaves = [m.rpartition(".")[2] for m in members]
        if by == "linear":
            key, index = "+".join([members[0], *leaves[1:]]), None
        elif by == "type":
            key, index = "+".join(leaves), None
        else:
            m = LAYER.match(n)
            key, index = (f"layer {int(m['index'])}", int(m["index"])) if m else (n, None)
        u = groups.setdefault(key, Unit(key, [], 0, index, by))
        u.linears.append(n)
        u.params += params[n]
    return list(groups.values())


def splits_a_fused_group(kept: list[str], names: list[str]) -> list[tuple[str, ...]]:
    """The fused groups of which ``kept`` (Linears left in BF16) holds some members but not all."""
    present, keep = set(names), set(kept)
    return sorted({g for n in keep if len(g := fused_key(n, present)) > 1 and not set(g) <= keep})


def ignore_patterns(units: list[Unit]) -> list[str]:
    """llm-compressor ``ignore`` entries for these units: exact module names, one ``re:`` pattern per layer, or one
    per projection of a type."""
    out = []
    for u in units:
        if u.index is not None:
            prefix = LAYER.match(u.linears[0])["prefix"]
            out.append(f"re:^{re.escape(prefix)}\\.{u.index}\\.")
        elif u.by == "type" and len(u.linears) > 1:
            out.extend(f"re:.*\\.{re.escape(leaf)}$" for leaf in u.name.split("+"))
        else:
            out.extend(u.linears)
    return out


class Probe:
    """One loaded BF16 model, its BF16 pass, and variants of it with chosen Linears fake-quantized."""

    def __init__(self, backend, docs, top_k: int, scheme: str = "nvfp4", log=print):
        import torch


        if scheme not in ("nvfp4", "nvfp4a16"):
            raise ValueError(f"scheme {scheme!r}: sensitivity measures nvfp4 (W4A4) or nvfp4a16 (weight-only)")
        self.backend, self.docs, self.top_k, self.scheme, self.log = backend, docs, top_k, scheme, log
        self.model = backend.model
        self.names = linear_names(self.model)
        self.modules = dict(self.model.named_modules())
        self.params = {n: self.modules[n].weight.numel() for n in self.names}
        amax: dict[str, float] = {}
        hooks = [self.modules[n].register_forward_pre_hook(
            lambda mod, args, n=n: amax.__setitem__(n, max(amax.get(n, 0.0), float(args[0].abs().max()))))
            for n in self.names]
        t0 = time.time()
        try:
            res = backend.loglikelihood_rolling(docs, top_k=top_k)
        finally:
            for h in hooks:
                h.remove()
        self.bf16_s = time.time() - t0
        self.ref = from_results(res, docs, top_k, "hf")
        self.tokens = sum(r.n_tokens for r in res)
        self.bf16_nll = -sum(r.logprob_sum for r in res) / self.tokens
        self.input_amax = amax
        self._weights: dict[str, tuple] = {}  # name -> (BF16 weight, its NVFP4 fake quantization)
        self._torch = torch

    def _quantized_weight(self, name: str):
        if name not in self._weights:
            import numpy as np

            from harness.reference import nvfp4 as R

            w = self.modules[name].weight.data
            group = R.fused_group(name, self.names)  # q/k/v and gate/up share one global scale, as llm-compressor
            amax = max(float(self.modules[m].weight.data.abs().max()) for m in group)
            g = R.global_scale(amax, "torch-bf16")
            x = w.float().cpu().numpy()
            deq = R.dequantize(*R.quantize(x, g, "torch-bf16"), g)
            self._weights[name] = (w.clone(), self._torch.from_numpy(np.asarray(deq, dtype=np.float32)).to(w.dtype)
                                   .to(w.device))
        return self._weights[name]

    def measure(self, quantized: list[str]) -> Measured:
        from harness.reference.nvfp4 import global_scale

        t0 = time.time()
        hooks = []
        try:
            for n in quantized:
                self.modules[n].weight.data.copy_(self._quantized_weight(n)[1])
                if self.scheme == "nvfp4":
                    g = float(global_scale(self.input_amax.get(n, 0.0), "torch-bf16"))
                    hooks.append(self.modules[n].register_forward_pre_hook(
                        lambda mod, args, g=g: (fake_quantize(args[0], g, "torch-bf16"), *args[1:])))
            res = self.backend.loglikelihood_rolling(self.docs, top_k=self.top_k)
        finally:
            for h in hooks:
                h.remove()
            for n in quantized:
                self.modules[n].weight.data.copy_(self._weights[n][0])
        tm = token_metrics(self.ref, from_results(res, self.docs, self.top_k, "hf"))
        nll = -sum(r.logprob_sum for r in res) / self.tokens
        return Measured(kld_mean=float(tm.kl.mean()), top1_pct=100.0 * float(tm.same_top1.mean()), ppl=math.exp(nll),
                        score=100.0 * math.exp(self.bf16_nll - nll), seconds=round(time.time() - t0, 2),
                        quantized=len(quantized))


def run(probe: Probe, by: str = "layer", mode: str = "only") -> Sensitivity:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    units = make_units(probe.names, probe.params, by)
    everything = probe.measure(probe.names)
    probe.log(f"all {len(probe.names)} Linears quantized: score {everything.score:.2f}, KL {everything.kld_mean:.4f} "
              f"({everything.seconds:.1f} s a variant)")
    out = Sensitivity(by, mode, probe.scheme, len(probe.docs), probe.tokens, math.exp(probe.bf16_nll), everything)
    for i, u in enumerate(units, 1):
        chosen = u.linears if mode == "only" else [n for n in probe.names if n not in set(u.linears)]
        m = probe.measure(chosen)
        probe.log(f"[{i}/{len(units)}] {u.name}: score {m.score:.2f}, KL {m.kld_mean:.4f} ({m.seconds:.1f} s)")
        out.rows.append((u, m))
    return out


def suggest(probe: Probe, sens: Sensitivity, target: float, max_units: int | None = None) -> dict:
    """A greedy, measured ignore list: in ranked order, each unit is tried on top of those kept so far and kept only
    if the model, quantized but for them, scores higher than the best so far; until ``target`` is reached, the units
    run out or ``max_units`` are kept. Returns the kept units, their llm-compressor patterns, every step tried (kept
    or not), the score reached and the BF16 bytes it costs."""
    chosen: list[Unit] = []
    best = sens.all_quantized.score
    steps = [{"ignore": [], "score": best, "kld_mean": sens.all_quantized.kld_mean, "kept": True}]
    reached = best >= target
    for u in (u for u, _ in sens.ranked()):
        if reached or (max_units is not None and len(chosen) >= max_units):
            break
        trial = chosen + [u]
        keep = {n for x in trial for n in x.linears}
        m = probe.measure([n for n in probe.names if n not in keep])
        kept = m.score > best
        steps.append({"ignore": [x.name for x in trial], "score": m.score, "kld_mean": m.kld_mean, "kept": kept})
        probe.log(f"leaving {', '.join(x.name for x in trial)} in BF16: score {m.score:.2f}"
                  + ("" if kept else f", not above {best:.2f}: {u.name} not kept"))
        if kept:
            chosen, best = trial, m.score
            reached = best >= target
    params = sum(u.params for u in chosen)
    return {"target": target, "reached": reached, "score": best, "units": [u.name for u in chosen],
            "ignore": ignore_patterns(chosen), "steps": steps, "params": params,
            "extra_bytes": round(params * (2 - NVFP4_BYTES_PER_PARAM))}
