"""The `harness` command line: `python -m harness.cli` or the `harness` script (main), one parser builder per subcommand
(parser), the options it shares with the pytest plugin (options), `harness init` (init)."""
