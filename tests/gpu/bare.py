"""What bare vLLM returned, read without the harness's code (the GPU tests compare the harness with it)."""
from __future__ import annotations


def bare_logprob_sums(outs, docs) -> list[float]:
    """Per document, the sum of its prompt tokens' log-probabilities (positions >= 1) read straight off bare
    ``LLM.generate`` outputs (``prompt_logprobs=0``: one {token: Logprob} per position), without the harness's code:
    what the harness's loglikelihood_rolling must return for the same prompts on the same engine."""
    return [sum(pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[1:], d[1:])) for o, d in zip(outs, docs)]
