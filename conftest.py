"""Root of this repo's test runs. The plugin (harness.plugin) is not loaded here: `-p harness.plugin` in
pyproject.toml's addopts loads it for this repo (also where the package is only on PYTHONPATH, as on the GPU
machines), and the pytest11 entry point loads it wherever the package is installed. A `pytest_plugins` line here
would break runs that collect harness/gate_tests.py of an editable install from another project."""
