"""The gate session: what lives between stages in one run (gate: GateSession), the one engine alive (engines), and its
baseline, judging and task steps (baselines, judging, tasks)."""
