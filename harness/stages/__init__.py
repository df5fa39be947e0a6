"""The gate's pipeline, one module per stage, each a function with a typed, frozen result (results.py).
``run.run_gate`` chains them for the CLI and the pytest plugin; ``harness.session.gate.GateSession`` keeps each result
once made (a pytest run asks for them one test at a time) and the one engine alive between stages; what every step
reads is the run's context (harness/session/context.py).

=========  =========================================  =====================  =================================
stage      takes                                      returns                module
=========  =========================================  =====================  =================================
prepare    the config, a tokenizer                    ``Prepared``           prepare (prepare_ahead: beside
                                                                             the engine's start)
provide    the config, recipe, calibration, cache     ``Checkpoint``         provide
score      one started engine, the prepared data      ``Scores``             score
judge      scores, BF16 baselines, thresholds         ``Judged`` (Verdict)   judge (harness.session.judging)
render     the report dict, the run's log             ``ReportFiles``        render (harness.report)
=========  =========================================  =====================  =================================

Beside them: preflight (the checks before any quantization or engine start), progress (the scoring pulse); the time
per stage is harness.timings.
"""
