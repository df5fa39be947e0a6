"""Print `export UV_...=...` lines that hand pip's configuration (pip.conf files and PIP_* variables, as
`pip config list` shows them) to uv, so that `uv pip install` resolves from the same indexes, links and constraints
as `pip install` would. Exit 1 on a setting uv would not see the same way (then CI installs with pip).

    eval "$(python .ci/uv_env.py)"
"""
import shlex
import subprocess
import sys

# pip's key -> (uv's variable, the separator uv reads between several values)
KEYS = {"index-url": ("UV_INDEX_URL", " "), "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
        "find-links": ("UV_FIND_LINKS", ","), "constraint": ("UV_CONSTRAINT", " ")}
HARMLESS = {"cert", "timeout", "default-timeout", "disable-pip-version-check", "progress-bar", "quiet", "no-compile",
            "root-user-action", "no-cache-dir", "cache-dir", "retries"}
SCOPES = {"global": 0, "install": 1, ":env:": 2}  # later wins, as in pip


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if out.returncode != 0:
        return 1
    found: dict[str, tuple[int, str]] = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition("=")
        scope, _, key = name.rpartition(".")
        if scope not in SCOPES or not value:
            continue
        if key not in KEYS:
            if key in HARMLESS:
                continue
            print(f"ci: pip setting {name} has no uv counterpart here: installing with pip", file=sys.stderr)
            return 1
        value = value.strip("'\"")
        if key not in found or SCOPES[scope] >= found[key][0]:
            found[key] = (SCOPES[scope], value)
    for key, (_, value) in found.items():
        var, sep = KEYS[key]
        print(f"export {var}={shlex.quote(sep.join(value.split()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
