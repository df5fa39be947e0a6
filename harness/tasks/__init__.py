"""Tasks beside perplexity: multiple-choice, greedy-continuation and generated tasks defined as
lm-evaluation-harness defines them, their shipped data, and the paired statistics of BF16 against a quantized model.
Torch-free: scoring goes through a backend's ``loglikelihood`` / ``generate_until``."""
from harness.tasks.definitions import TASKS, TaskSpec, task_spec

__all__ = ["TASKS", "TaskSpec", "task_spec"]
