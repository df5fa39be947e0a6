"""Root of this repo's test runs. The plugin (harness.pytest_plugin) is not loaded here: `-p harness.pytest_plugin` in
pyproject.toml's addopts loads it for this repo (also where the package is only on PYTHONPATH, as on the GPU
machines), and the pytest11 entry point loads it wherever the package is installed. A `pytest_plugins` line here
would break runs that collect harness/pytest_plugin/gate_tests.py of an editable install from another project.

What is set here is set before any test process starts (pytest-xdist workers and subprocesses inherit it): one
checkpoint cache per run (unless HARNESS_CACHE is set), so each (model, recipe, calibration) is quantized once and
shared; and the ledger of quantization children (HARNESS_QUANT_LEDGER, harness/quant/quantize.py). At the end of the run
the ledger is summed up, and a second llm-compressor build of a checkpoint the run already built fails the run,
unless the test that asked is marked ``own_quantization`` (tests of building, killing and locking)."""
import os
import sys
import tempfile

import pytest

_made = []  # the temporary folders this process made for the run: removed when it ends (pytest_unconfigure)
if not os.environ.get("HARNESS_CACHE"):
    os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-test-cache-")
    _made.append(os.environ["HARNESS_CACHE"])
if not os.environ.get("HARNESS_QUANT_LEDGER"):
    os.environ["HARNESS_QUANT_LEDGER"] = os.path.join(tempfile.mkdtemp(prefix="harness-test-ledger-"), "quant.jsonl")
    _made.append(os.path.dirname(os.environ["HARNESS_QUANT_LEDGER"]))
OWN = os.environ["HARNESS_QUANT_LEDGER"] + ".own"  # node ids of the tests marked own_quantization


_prefetch = []  # the background `harness fetch-model` of this run, if one was started
_warmed = []  # not empty once the session's start has started the warm quantization interpreter


def pytest_configure(config):
    config.addinivalue_line("markers", "own_quantization: a test of building, killing or locking that quantizes in "
                                       "a cache of its own (the run's ledger check allows its rebuild)")
    config.addinivalue_line("markers", "early(name): the test asserts on tests/early.py's scenario NAME, which runs "
                                       "in the background from the run's start when the test is selected")
    config.addinivalue_line("markers", "real_weights(name): needs the package-index model NAME converted to BF16; "
                                       "when such a test is selected, the conversion starts in the background as the "
                                       "run begins (the test waits on its lock)")


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: only what will run counts
def pytest_collection_modifyitems(config, items):
    own = [i.nodeid for i in items if i.get_closest_marker("own_quantization")]
    if own:
        with open(OWN, "a", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in own))
    if not config.option.collectonly and not os.environ.get("PYTEST_XDIST_WORKER"):
        if not _warmed:
            _warm_quantization(items)
        names = [m.args[0] for i in items for m in i.iter_markers("early")]
        if names:  # other processes' start-up, overlapped with the first tests, in the order the tests come
            import early  # tests/early.py: on the path, as the test modules carrying the marker import it

            early.start(names)
    names = sorted({m.args[0] for i in items for m in i.iter_markers("real_weights")})
    if names and not _prefetch and not config.option.collectonly and not os.environ.get("PYTEST_XDIST_WORKER"):
        import subprocess  # fetching and converting is ~1.5 min of single-threaded work: overlap it with other tests

        log = open(os.environ["HARNESS_QUANT_LEDGER"] + ".prefetch.log", "a")
        for name in names:
            _prefetch.append(subprocess.Popen([sys.executable, "-m", "harness.cli.main", "fetch-model", name],
                                              stdout=log, stderr=log, stdin=subprocess.DEVNULL))


def pytest_sessionstart(session):
    """A run of whole folders (the README's test command, CI): the warm quantization interpreter starts before the
    collection (~7 s of one core), beside it, as the first tests that build come early; a run that names files or a
    marker starts it once collected, where a selected test will build (pytest_collection_modifyitems)."""
    config = session.config
    if config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER") or config.option.markexpr:
        return
    if config.args and all(os.path.isdir(a) for a in config.args):
        _warm_quantization(None)
        _warmed.append(True)  # pytest_collection_modifyitems need not ask again


def _warm_quantization(items) -> None:
    """Where selected tests will build the tiny default's checkpoint (a CPU run with an empty cache): its quantization
    interpreter starts importing llm-compressor now, beside the first tests, as `harness gate` starts it beside its
    data preparation (harness/stages/provide.py warm_up), not on the critical path of the first test that builds (~10 s)."""
    from harness.quant import zygote_client

    if not zygote_client.enabled() or (items is not None and
                                       not any("gpu" not in i.nodeid.split("::")[0].split("/") for i in items)):
        return
    try:
        from harness.config.load import load_config
        from harness.session.gate import GateSession

        GateSession(load_config(), quiet=True).provider.warm_up()
    except Exception as e:  # noqa: BLE001 - an optimisation only: the test that builds reports any problem; said, so
        print(f"conftest: quantization warm-up skipped: {type(e).__name__}: {e}", file=sys.stderr)  # a lost one shows


def quantization_summary() -> tuple[list[str], list[str]]:
    """(lines to print, faults): every child by test, and llm-compressor builds of a key already built this run by a
    test not marked own_quantization."""
    import json
    from collections import Counter

    from harness.quant.quantize import read_ledger

    runs = read_ledger(os.environ["HARNESS_QUANT_LEDGER"])
    if not runs:
        return [], []
    own = set(open(OWN, encoding="utf-8").read().split()) if os.path.exists(OWN) else set()
    real = [r for r in runs if os.path.realpath(r.get("python") or "") == os.path.realpath(sys.executable)]
    built = [r for r in real if r["rc"] == 0]
    n = len(runs)
    lines = [f"{n} {'child' if n == 1 else 'children'}: {len(built)} llm-compressor builds "
             f"({sum(r['seconds'] for r in built):.0f} s), {len(real) - len(built)} stopped or failed on purpose, "
             f"{n - len(real)} test doubles"]
    seen, faults = set(), []
    for r in built:
        key = json.dumps([r["model"], r["recipe_sha256"], r["calibration"], r.get("device_map")], sort_keys=True)
        test = r.get("test") or "(outside a test)"
        where = "own" if test in own else "shared"
        if key in seen and where == "shared":
            faults.append(f"{test} built {os.path.basename(r['model'])} (recipe {r['recipe_sha256']}) again: use the "
                          "run's cache (HARNESS_CACHE), or mark the test own_quantization if building is what it tests")
        seen.add(key)
        lines.append(f"  {r['seconds']:5.1f} s  {where:6} {os.path.basename(r['model'])} recipe {r['recipe_sha256']}  "
                     f"{test}")
    rest = Counter((r.get("test") or "(outside a test)", f"rc {r['rc']}" if r in real else "test double")
                   for r in runs if r not in built)
    for (test, what), n in rest.items():
        lines.append(f"  {n} x {what}: {test}")
    return lines, faults


def pytest_sessionfinish(session):
    if "early" in sys.modules:  # tests/early.py's scenarios: none left running, their folders removed
        sys.modules["early"].stop()
    for p in _prefetch:  # a run that ended before it finished (-x, Ctrl-C) does not leave it behind
        if p.poll() is None:
            p.terminate()
        p.wait()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller sums up the run
    lines, faults = quantization_summary()
    session.config._quantization_summary = (lines, faults)
    if lines:  # its first line, for .ci/run to print after the run: how many children, and of which kind
        with open(os.environ["HARNESS_QUANT_LEDGER"] + ".summary", "w", encoding="utf-8") as f:
            f.write(lines[0] + "\n")
    if faults and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_unconfigure(config):
    """The run's cache (~400 MB of checkpoints, the converted SmolLM2, logs) and ledger go with the run that made
    them; a HARNESS_CACHE or HARNESS_QUANT_LEDGER set from outside (.ci/run's ledger) is left alone. Its quantization
    interpreters are stopped first (they write their logs there)."""
    if not _made or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if "harness.quant.zygote_client" in sys.modules:
        sys.modules["harness.quant.zygote_client"].close_all()
    import shutil

    for d in _made:
        shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, config):
    lines, faults = getattr(config, "_quantization_summary", ([], []))
    if not lines:
        return
    tr = terminalreporter
    tr.section("quantization children")
    for ln in lines + [f"FAULT: {f}" for f in faults]:
        tr.write_line(ln)
