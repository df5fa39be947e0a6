"""Real text shipped with the harness, with its licence and attribution (``builtin:texts/...``); see README.md here."""
