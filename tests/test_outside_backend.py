"""Backends others can add: the entry-point group harness.backends (harness/backends/__init__.py). A throwaway
distribution with a toy backend, installed as pip installs one, and the gate run through it; the errors that say
what is installed and what is not. (A module of its own, after test_compare.py in the run: the tiny default's first
build stays where the warm quantization interpreter has had time to import.)"""
from __future__ import annotations

import pytest

from harness.errors import ConfigError

TOY = '''"""An outside package's backend: transformers underneath, under a name of its own."""
from harness.backends import BackendSpec
from harness.backends.hf import HFBackend


class ToyBackend(HFBackend):
    name = "toy"


SPEC = BackendSpec("toy", "toy_backend:ToyBackend", "harness.backends.engine_args:check_hf_kwargs", needs_gpu=False,
                   extra="", modules=("torch", "transformers"), install="pip install toy-backend")
MISSING = BackendSpec("toy-missing", "toy_backend:ToyBackend", "harness.backends.engine_args:check_hf_kwargs",
                      needs_gpu=False, extra="", modules=("no_such_library_xyz",), install="pip install toy-missing")
'''


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A throwaway distribution installed as pip installs one: its module and its .dist-info (METADATA, and
    entry_points.txt in the group harness.backends) in a folder on sys.path; the registry read again, and after."""
    from harness.backends import BACKENDS

    site = tmp_path / "site"
    (site / "toy_backend-0.1.dist-info").mkdir(parents=True)
    (site / "toy_backend.py").write_text(TOY)
    (site / "toy_backend-0.1.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 0.1\n")
    (site / "toy_backend-0.1.dist-info/entry_points.txt").write_text(
        "[harness.backends]\ntoy = toy_backend:SPEC\ntoy-missing = toy_backend:MISSING\nbroken = toy_backend:NOPE\n")
    monkeypatch.syspath_prepend(str(site))
    BACKENDS.reload()
    yield site
    monkeypatch.undo()
    BACKENDS.reload()


def test_the_built_ins_are_registered_as_entry_points_by_this_package(root):
    """pyproject.toml registers hf and vllm in the group exactly as the registry falls back to them where the package
    is on PYTHONPATH without being installed (the GPU machines)."""
    import tomllib

    from harness.backends import BACKENDS, BUILTIN, GROUP

    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    assert declared == BUILTIN == {"hf": "harness.backends:HF", "vllm": "harness.backends:VLLM"}
    assert {n: BACKENDS[n].name for n in ("hf", "vllm")} == {"hf": "hf", "vllm": "vllm"}


def test_an_outside_package_adds_a_backend_and_the_gate_runs_through_it(toy_package, quick_project, tmp_path, capsys):
    import json

    import yaml

    from harness.cli.main import main

    cfg = yaml.safe_load((quick_project / "configs/tiny.yaml").read_text())
    for prec in cfg["model"]["engine"].values():
        prec["toy"] = dict(prec["hf"])  # its settings, checked by the toy spec's check (the hf one)
    (quick_project / "configs/toy.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["gate", "--config", str(quick_project / "configs/toy.yaml"), "--backend", "toy", "--report-dir",
               str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "baseline scored with hf on cpu, this run with toy on cpu" in out
    report = json.loads(next((tmp_path / "r").glob("*/report.json")).read_text())
    assert report["backend"] == "toy", report.get("backend")


def test_errors_say_which_backends_are_installed_which_are_not_and_which_failed(toy_package):
    from harness.backends import backend_spec
    from harness.backends import missing_extra
    from harness.stages.preflight import check_backend_installed

    with pytest.raises(ConfigError) as e:
        backend_spec("trt")
    msg = str(e.value)
    assert "known backends: hf, toy, toy-missing, vllm" in msg and "installed here: hf, toy" in msg
    assert "toy-missing (pip install toy-missing)" in msg
    assert "entry point broken = toy_backend:NOPE does not load: AttributeError" in msg
    with pytest.raises(ConfigError, match="backend 'broken' is registered but unusable"):
        backend_spec("broken")
    with pytest.raises(Exception, match=r"no_such_library_xyz is not installed .* the toy-missing backend needs "
                                        r"pip install toy-missing"):
        check_backend_installed("toy-missing")
    err = missing_extra(ModuleNotFoundError("no module", name="no_such_library_xyz"))
    assert "the toy-missing backend needs it: pip install toy-missing" in str(err)
    assert missing_extra(ModuleNotFoundError("x", name="numpyy")) is None  # not an optional library: a bug, exit 3
