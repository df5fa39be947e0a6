"""The second stage of a gate: the quantized checkpoint to score. The recipe run by llm-compressor in its own
interpreter (harness.quant.quantize) and cached by content (harness.quant.cache), or an existing checkpoint gated as it is
(``model.checkpoint``)."""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from harness.checkpoint import check_shards, existing_checkpoint, require_scheme
from harness.config.sections import CalibrationSpec
from harness.data.files import check_data_files, local_data_files
from harness.errors import HarnessError, unknown_name
from harness.limits import DISTRIBUTION_LIMITS
from harness.models import identity
from harness.quant import quantize as q, zygote_client
from harness.quant.cache import CheckpointCache, cache_key, interpreter_versions
from harness.recipes.catalog import load_recipe
from harness.stages.results import Checkpoint


class CheckpointProvider:
    """One (config, recipe) case's checkpoint, built or found once. ``model_identity()`` names the BF16 model (the
    cache key's first part); ``check_architecture(path)`` refuses an existing checkpoint of another model."""

    def __init__(self, cfg, source, recipe_name: str, existing: str | None, interp, log, model_identity,
                 check_architecture):
        self.cfg, self.recipe_name, self.existing, self.interp, self.log = cfg, recipe_name, existing, interp, log
        self.source = source  # the BF16 model, located once (harness.config.locate.ModelSource)
        self._model_identity, self._check_architecture = model_identity, check_architecture
        self._recipe = None
        self._checkpoint: Checkpoint | None = None

    def recipe(self):
        if self._recipe is None:
            r = load_recipe(self.cfg.path_of("recipes_dir"), self.recipe_name)
            known = ["overall", *self.cfg.datasets, *DISTRIBUTION_LIMITS]  # scores and the distribution limits
            bad = sorted(k for k in r.thresholds if k not in known)
            if bad:
                raise unknown_name(f"threshold key in recipe {r.name}", bad[0], known)
            self._recipe = r
        return self._recipe

    def calibration(self):
        merged = {**self.recipe().calibration.model_dump(), **self.cfg.calibration}
        try:
            cal = CalibrationSpec.model_validate(merged)
        except Exception as e:  # pydantic ValidationError
            raise HarnessError(f"calibration override in {self.cfg.source_path}: {e}") from None
        cal.data_files = self.cfg.resolve_files(cal.data_files)
        return cal

    def warm_up(self) -> bool:
        """Where this gate will build (a recipe, nothing cached for this model, recipe and calibration): start the
        quantization interpreter now, so that its import overlaps data preparation (harness/quant/zygote_client.py).
        True if one was started or is running. Any problem here is left to checkpoint() to report."""
        if self.existing or self._checkpoint is not None:
            return False

        if not zygote_client.enabled():
            return False
        try:
            recipe, cal = self.recipe(), self.calibration()
            cache = self._cache()
            if cache.find(self._model_key(), recipe.recipe_text, cal.model_dump()) is not None:
                return False  # most likely a cache hit: no import to pay
        except Exception:  # noqa: BLE001 - an optimisation only: preflight and checkpoint() report any problem
            return False
        return zygote_client.prestart(self.interp.python, self.interp.env(), cache.log_dir())

    def _cache(self):
        return CheckpointCache(self.cfg.cache_path(), lock_timeout_s=self.cfg.quantize.lock_timeout_s)

    def _model_key(self) -> dict:
        return {**identity.key(self._model_identity()), "trust_remote_code": bool(self.cfg.model.trust_remote_code)}

    def checkpoint(self, build: bool = True) -> Checkpoint | None:
        """The quantized checkpoint (from the cache, or built now), its info with cache_hit. ``build=False``: None
        where it would have to be built (nothing sound under its key)."""
        if self._checkpoint is None:
            self._checkpoint = self._existing() if self.existing else self._cached_or_built(build)
        return self._checkpoint

    def _existing(self) -> Checkpoint:
        """An existing quantized checkpoint, gated as it is."""
        path = self.source.checkpoint.path
        info = {"cache_hit": None, "recipe": None, "quantize_s": None, **existing_checkpoint(path)}
        self._check_architecture(path)
        self.log(f"gating the existing checkpoint {path} (scheme {info['scheme']}); no quantization")
        return Checkpoint(Path(path), info)

    def _cached_or_built(self, build: bool) -> Checkpoint | None:
        """The recipe's checkpoint from the cache, or built now by llm-compressor in the quantization interpreter."""
        recipe, cal = self.recipe(), self.calibration()
        model_path = self.source.path
        if Path(model_path).is_dir():
            check_shards(Path(model_path))
        cache, model_key = self._cache(), self._model_key()
        try:
            versions = interpreter_versions(self.interp)
        except HarnessError as e:  # no llm-compressor here (a vLLM-only env): a cached build still serves
            return self._without_quantizer(cache, model_key, e)
        qcfg = self.cfg.quantize
        default = type(qcfg).model_fields["cpu_matmul"].default  # a default stays out of the key
        options = {"cpu_matmul": qcfg.cpu_matmul} if qcfg.cpu_matmul != default else None
        key, material = cache_key(model_key, recipe.recipe_text, cal.model_dump(), versions, options)
        stale = partial(stale_build, cpu_matmul=qcfg.cpu_matmul)
        if not build and not cache.sound(key, stale=stale):
            return None
        t0 = time.time()
        path, hit = cache.get_or_build(key, material, lambda tmp: self._quantize_into(tmp, cache.log_path(key)),
                                       log=self.log, stale=stale)
        if hit:  # the key holds the recipe's text, not its promised scheme: an edited `scheme:` meets an old entry
            require_scheme(path, recipe.scheme)
        built = json.loads((path / "harness_cache.json").read_text()).get("build", {})
        info = {"cache_hit": hit, "cache_key": key, "seconds": round(time.time() - t0, 2), "recipe": recipe.name,
                "scheme": recipe.scheme, "quantize_s": built.get("quantize_s"), "versions": built.get("versions")}
        self.log(f"quantized checkpoint {'from cache' if hit else 'built'}: {path}")
        return Checkpoint(path, info)

    def _without_quantizer(self, cache, model_key: dict, e: HarnessError) -> Checkpoint:
        """No quantization interpreter here: the newest cached build of this model, recipe and calibration, whatever
        llm-compressor built it; else the interpreter's error."""
        recipe = self.recipe()
        entry = cache.find(model_key, recipe.recipe_text, self.calibration().model_dump())
        if entry is None:
            raise e
        path, meta = entry
        self.log(f"no quantization interpreter here ({str(e).splitlines()[0][:160]}); using the cached "
                 f"checkpoint built with {meta['material']['versions']}: {path}")
        return Checkpoint(path, {"cache_hit": True, "cache_key": path.name, "seconds": 0.0, "recipe": recipe.name,
                                 "scheme": recipe.scheme, "quantize_s": meta.get("build", {}).get("quantize_s"),
                                 "versions": meta.get("build", {}).get("versions")})

    def _quantize_into(self, tmp: Path, log_path: Path) -> dict:
        """llm-compressor's oneshot of the recipe into the empty folder ``tmp`` (in the quantization interpreter);
        the build's record."""
        m, cal, qcfg, recipe = self.cfg.model, self.calibration(), self.cfg.quantize, self.recipe()
        # the calibration's local files, before the quantization interpreter spends its start on them
        check_data_files(local_data_files(cal.path, cal.split, cal.data_files))
        spec = q.QuantSpec(model=self.source.path, revision=m.revision, tokenizer=self.source.tokenizer,
                           recipe=recipe.recipe_text, calibration=cal, output_dir=str(tmp),
                           trust_remote_code=m.trust_remote_code, device_map=qcfg.device_map,
                           cpu_matmul=qcfg.cpu_matmul)
        info = q.run_quantization(spec, self.interp, log_path, log=self.log, timeout_s=qcfg.timeout_s,
                                  heartbeat_s=qcfg.heartbeat_s)
        check_shards(tmp)
        require_scheme(tmp, recipe.scheme)
        return {k: v for k, v in info.items() if k != "spec"}


def stale_build(built: dict, cpu_matmul: str) -> str | None:
    """Why a cached build does not hold what its key promises, or None. A setting at its default stays out of the key
    (harness/stages/provide.py), so an entry a CPU-only torch built before builds recorded their calibration arithmetic
    (2026-11-30) shares the key of an fp32 build while it calibrated with torch's bf16 kernels. A GPU build (a CUDA
    torch) never widened anything, recorded or not."""
    torch = str((built.get("versions") or {}).get("torch") or "")
    if cpu_matmul == "fp32" and "cpu_matmul" not in built and torch.endswith("+cpu"):
        return ("built before builds recorded their calibration arithmetic: calibrated with torch's bf16 kernels, "
                "where quantize.cpu_matmul: fp32 (the default) calibrates in float32")
    return None

