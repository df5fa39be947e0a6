"""`python -m harness.cli`: the `harness` command."""
from harness.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
