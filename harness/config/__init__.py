"""The configuration: its typed schema loaded from YAML (schema), validation errors as lines a user can act on
(messages), `--set` overrides (overrides), where a named model or file lives (locate), what the package ships
(bundled)."""
