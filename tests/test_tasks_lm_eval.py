"""The tasks checked against lm-evaluation-harness itself (lm-eval 0.4.13, a test dependency): its own task YAMLs
(arc, piqa, hellaswag, winogrande, lambada, gsm8k) pointed at the shipped files (`dataset_path: json` with local
`data_files`), its own request construction and its own HF model class, against this harness's prompts and hf
backend on the same model.

Tolerance of a log-likelihood: both sides run the same weights in float32, through two attention code paths:
lm-eval runs its padded batch without an attention mask (causality keeps right padding out of view,
models/huggingface.py ``_model_call``), this harness passes the padding mask, so PyTorch's attention reduces in
another order. A logit then moves by about float32's epsilon (1.2e-7) times its magnitude (tens) per layer it passes
(SmolLM2: 30), about 1e-4 nats; the continuation's log-likelihood sums one such term per token:
|ours - theirs| <= 1e-4 * continuation tokens. (lm-eval against itself at batch sizes 1 and 8, one path, agreed to
8e-6 per token on SmolLM2; this harness against lm-eval, measured when this was written: at most 2.5e-5 per token on
SmolLM2, 2.4e-6 on the tiny model.) Correctness is compared item by item; an item whose best two choices lie within
that tolerance of each other could legitimately go either way and is reported, not hidden (none is expected).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.tasks import TASKS
from harness.tasks.load import DATA_DIR, fewshot_rows, shipped_rows
from harness.tasks.prepare import build_items, prepare_task
from harness.tasks.results import score_task

LM_EVAL_YAML = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
                "piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
                "winogrande": "winogrande/default.yaml", "lambada_openai": "lambada/lambada_openai.yaml",
                "gsm8k": "gsm8k/gsm8k.yaml"}
LOGLIKELIHOOD = [t for t in LM_EVAL_YAML if t != "gsm8k"]
PER_TOKEN = 1e-4  # nats per continuation token (module docstring)


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """lm-eval's own task definitions (``include``), read from the shipped files instead of the hub."""
    pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (the dev extra): pip install -e '.[dev]'")
    import lm_eval.tasks

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    lm_dir = Path(lm_eval.tasks.__file__).parent
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, yaml_file in LM_EVAL_YAML.items():
        spec = TASKS[name]
        split = spec.hub.split
        files = f"    {split}: {DATA_DIR / spec.file}\n"
        fewshot = "null"
        if spec.fewshot_file:
            files += f"    train: {DATA_DIR / spec.fewshot_file}\n"
            fewshot = "train"
        (d / f"shipped_{name}.yaml").write_text(
            f"include: {lm_dir / yaml_file}\ntask: shipped_{name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"training_split: {fewshot}\nfewshot_split: {fewshot}\nvalidation_split: null\ntest_split: null\n"
            f"{split}_split: {split}\ndataset_kwargs:\n  data_files:\n{files}")
    return lm_eval.tasks.TaskManager(include_path=str(d), include_defaults=False)  # not its ~10k own YAMLs


def lm_eval_task(tm, name: str):
    import lm_eval.tasks

    task = lm_eval.tasks.get_task_dict([f"shipped_{name}"], tm)[f"shipped_{name}"]
    task.set_fewshot_seed(1234)  # simple_evaluate's fewshot_random_seed default
    return task


def our_items(name: str, limit: int | None):
    spec = TASKS[name]
    rows, where = shipped_rows(spec)
    return build_items(spec, rows, where, limit, fewshot_rows(spec) if spec.fewshot_file else None)


@pytest.mark.parametrize("name", list(LM_EVAL_YAML))
def test_prompts_are_lm_eval_s_own(task_manager, name):
    """Every (context, continuation) of the first 100 items (gsm8k: 20, each with its five examples) as lm-eval's
    build_all_requests makes them; the whole splits agreed too when this was written (gsm8k: 50; docs/results)."""
    limit = 20 if name == "gsm8k" else 100
    task = lm_eval_task(task_manager, name)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    theirs: dict[int, list] = {}
    for inst in task.instances:
        theirs.setdefault(inst.doc_id, []).append(tuple(inst.arguments))
    items = our_items(name, limit)
    assert len(theirs) == len(items) == limit
    for i, item in enumerate(items):
        if name == "gsm8k":
            assert theirs[i][0][0] == item.prompt, f"gsm8k item {i}: prompts differ:\n{theirs[i][0][0]!r}\n{item.prompt!r}"
            assert theirs[i][0][1]["until"] == ["Question:", "</s>", "<|im_end|>"]
        else:
            assert theirs[i] == list(item.requests), (f"{name} item {i}: lm-eval asks {theirs[i]}, this harness "
                                                      f"{list(item.requests)}")


def compare_with_lm_eval(task_manager, model_dir: str, names: list[str], limit: int, max_len: int = 2048):
    """Run lm-eval (its HFLM, float32) and this harness's hf backend (float32) on the same items; assert each
    request's log-likelihood and greedy flag, and each item's acc / acc_norm."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from harness.backends import EngineSpec, make_backend

    lm = HFLM(pretrained=model_dir, dtype="float32", batch_size=8, device="cpu", max_length=max_len)
    out = simple_evaluate(model=lm, tasks=[f"shipped_{n}" for n in names], limit=limit, task_manager=task_manager,
                          log_samples=True, bootstrap_iters=0)
    del lm
    tok = AutoTokenizer.from_pretrained(model_dir)
    near_ties, worst = [], 0.0
    with make_backend("hf", EngineSpec(model=model_dir, precision="bf16", max_model_len=max_len,
                                       engine_kwargs={"dtype": "float32", "threads": 2})) as eng:
        for name in names:
            prep = prepare_task(TASKS[name], our_items(name, limit), tok, max_model_len=max_len,
                                add_special_tokens=True, source="shipped", tokenizer_id=model_dir)
            ours = score_task(eng, prep)
            samples = sorted(out["samples"][f"shipped_{name}"], key=lambda s: s["doc_id"])
            assert len(samples) == prep.n == limit
            for i, s in enumerate(samples):
                theirs = [r[0] for r in s["resps"]]  # (loglikelihood, is_greedy) per request
                for j, ((ll_t, g_t), ll_o, g_o) in enumerate(zip(theirs, ours.lls[i], ours.greedy[i])):
                    n_tok = len(prep.requests[prep.item_requests(i)[j]][1])
                    worst = max(worst, abs(ll_o - ll_t) / n_tok)
                    assert abs(ll_o - ll_t) <= PER_TOKEN * n_tok, \
                        f"{name} item {i} request {j}: log-likelihood {ll_o!r} here, {ll_t!r} in lm-eval ({n_tok} tokens)"
                    assert g_o == bool(g_t), f"{name} item {i} request {j}: is_greedy {g_o} here, {g_t} in lm-eval"
                for metric in ours.correct:
                    if ours.correct[metric][i] != s[metric]:
                        lls = sorted(ours.lls[i], reverse=True)
                        if len(lls) > 1 and lls[0] - lls[1] <= 2 * PER_TOKEN * max(len(t) for _, t in prep.requests):
                            near_ties.append((name, i, metric))
                            continue
                        raise AssertionError(f"{name} item {i}: {metric} {ours.correct[metric][i]} here, "
                                             f"{s[metric]} in lm-eval (lls {ours.lls[i]} / {theirs})")
            for metric in ours.correct:
                agg = out["results"][f"shipped_{name}"][f"{metric},none"]
                assert ours.accuracy(metric) == pytest.approx(agg, abs=len(near_ties) / limit + 1e-12)
    assert not near_ties, f"items within the tolerance of a tie, decided differently: {near_ties}"
    print(f"largest difference from lm-eval: {worst:.2e} nats per continuation token")


def test_loglikelihoods_and_accuracy_match_lm_eval_on_the_tiny_model(task_manager, root):
    compare_with_lm_eval(task_manager, str(root / "harness/tiny/model"), LOGLIKELIHOOD, limit=25, max_len=512)


@pytest.mark.real_weights("smollm2-135m")
def test_loglikelihoods_and_accuracy_match_lm_eval_on_smollm2(task_manager):
    from harness.models import pypi as pm

    # the three kinds of request on a real tokenizer and 30 layers: 4-way acc_norm, partial context (winogrande) and a
    # greedy target (lambada); every task on the tiny model above
    compare_with_lm_eval(task_manager, str(pm.materialise("smollm2-135m")),
                         ["hellaswag", "winogrande", "lambada_openai"], limit=5)


def test_gsm8k_generations_and_answers_match_lm_eval(task_manager, root):
    """A handful of items generated greedily by lm-eval (HFLM, batch 1) and by this harness's hf backend: the same
    text up to the stop sequence, and the same strict-match answer."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from harness.backends import EngineSpec, make_backend
    from harness.tasks.definitions import MAX_GEN_TOKS, UNTIL, cut_at_stop, strict_match

    model = str(root / "harness/tiny/model")
    lm = HFLM(pretrained=model, dtype="float32", batch_size=1, device="cpu", max_length=4096)  # no truncation
    out = simple_evaluate(model=lm, tasks=["shipped_gsm8k"], limit=3, task_manager=task_manager, log_samples=True,
                          bootstrap_iters=0, gen_kwargs={"max_gen_toks": 32})
    samples = sorted((s for s in out["samples"]["shipped_gsm8k"] if s["filter"] == "strict-match"),
                     key=lambda s: s["doc_id"])
    assert len(samples) == 3
    tok = AutoTokenizer.from_pretrained(model)
    prep = prepare_task(TASKS["gsm8k"], our_items("gsm8k", 3), tok, max_model_len=4096, add_special_tokens=True,
                        source="shipped", tokenizer_id=model)
    with make_backend("hf", EngineSpec(model=model, precision="bf16", max_model_len=4096,
                                       engine_kwargs={"dtype": "float32", "threads": 2})) as eng:
        texts = [cut_at_stop(t) for t in eng.generate_until([list(p) for p in prep.prompts], UNTIL, 32)]
    assert MAX_GEN_TOKS == 256  # lm-eval's default; 32 here keeps the tiny model's babble short
    for s, text in zip(samples, texts):
        assert text == s["resps"][0][0], f"item {s['doc_id']}: generated {text!r} here, {s['resps'][0][0]!r} in lm-eval"
        assert strict_match(text) == s["filtered_resps"][0]
