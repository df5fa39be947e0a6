"""Loading a config: the YAML file (or the embedded tiny default), ``--set`` overrides, the project root its relative
paths resolve against."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from harness.config.bundled import bundled_dir, is_inside_package
from harness.config.messages import format_validation_error
from harness.config.overrides import set_dotted
from harness.config.schema import HarnessConfig
from harness.errors import ConfigError, unknown_name


def project_of(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``pyproject.toml`` (None: none)."""
    start = start.resolve()
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").exists():
            return d
    return None


def find_root(start: Path) -> Path:
    """The project a path belongs to: :func:`project_of`, else the working directory (never the config's own folder:
    a project without pyproject.toml keeps its baselines and reports where it runs, not under configs/)."""
    return project_of(start) or Path.cwd().resolve()


def default_config_path() -> Path:
    """The embedded tiny default: configs/tiny.yaml of the project in the cwd, else the one the package ships."""
    cand = find_root(Path.cwd()) / "configs" / "tiny.yaml"
    if cand.exists():
        return cand
    shipped = bundled_dir("configs")
    if shipped is not None and (shipped / "tiny.yaml").exists():
        return shipped / "tiny.yaml"
    raise ConfigError("no --config given, no configs/tiny.yaml in this project and none shipped with the harness "
                      "(a broken install? reinstall nvfp4-gate); pass --config PATH")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> HarnessConfig:
    implicit = not path
    path = Path(path) if path else default_config_path()
    if not path.exists():
        raise ConfigError(f"config file {path} not found; see configs/ for examples (configs/tiny.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")

    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    try:
        cfg = HarnessConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, HarnessConfig, str(path))) from None
    cfg.source_path = str(path.resolve())
    declared = data.get("root")
    cfg.root = str((path.parent / os.path.expanduser(declared)).resolve()) if declared else str(find_root(path.parent))

    if implicit and is_inside_package(path) and project_of(path.parent) != find_root(Path.cwd()):
        # the shipped default run from a user's project: outputs (reports, new baselines) go to that project; the
        # shipped tiny baselines are read when the project has none of its own
        cfg.root = str(find_root(Path.cwd()))
        if "baselines_dir" not in data:
            cfg.fallback_baselines_dir = str(bundled_dir("baselines"))
    return cfg


def check_dataset_names(cfg: HarnessConfig, names) -> None:
    for n in names:
        if n not in cfg.datasets:
            raise unknown_name("dataset", n, cfg.datasets)
