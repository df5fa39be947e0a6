"""The tasks: what each item asks the model, following lm-evaluation-harness's own task definitions (0.4.x YAMLs and
their utils), so that the numbers read like the ones users already know. Pure Python: no torch, no tokenizer.

=============== ============== ========================================================== ========================
task            kind           prompt -> continuation(s) (lm-eval's doc_to_text / choice)  metrics (gated: first)
=============== ============== ========================================================== ========================
arc_easy        choice         "Question: {question}\\nAnswer:" -> " {choice}"             acc_norm, acc
arc_challenge   choice         the same                                                    acc_norm, acc
piqa            choice         "Question: {goal}\\nAnswer:" -> " {sol1}" | " {sol2}"       acc, acc_norm
hellaswag       choice         preprocess(label + ": " + ctx_a + " " + Ctx_b) -> " {end}"  acc_norm, acc
winogrande      partial        sentence[:blank] + option -> " " + sentence[blank+1:]      acc
lambada_openai  greedy         text without its last word -> " " + last word                acc, target perplexity
gsm8k           generate       5 train examples + "Question: {q}\\nAnswer:", greedy         exact_match (strict)
=============== ============== ========================================================== ========================

acc: the choice of highest summed log-likelihood is the gold one; acc_norm: the same after dividing each by the
choice's length in characters (lm-eval's ``completion_len``, the delimiter excluded); winogrande's choices are the
contexts (``multiple_input``), the continuation is shared; lambada's acc: every target token is the greedy one.

A second prompt style, ``lighteval`` (a config's ``style``), is how the SmolLM2 model cards were scored: lighteval at
the commit huggingface/smollm's ``text/evaluation/smollm2/requirements.txt`` pins (ea46419a), with that repository's
``tasks.py``. For ARC and PIQA its prompts are lm-eval's (``default_prompts.arc``, ``piqa_harness``) and its
``loglikelihood_acc_norm_nospace`` (``LogProbCharNorm(ignore_first_space=True)``) divides by the same characters as
lm-eval's acc_norm; HellaSwag's prompt differs (``prompt_hellaswag``: the query keeps a trailing space and is not
stripped). The card gates acc_norm on all four. Its ``--use_chat_template`` is the config's ``chat_template``
(harness/tasks/prepare.py).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Callable

from harness.errors import DataError, unknown_name

DELIMITER = " "          # lm-eval's target_delimiter
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234      # lm-eval's fewshot_random_seed (evaluator.simple_evaluate)


@dataclass(frozen=True)
class Item:
    """One task item: its (context, continuation) requests, the gold answer, and what acc_norm divides by."""

    requests: tuple[tuple[str, str], ...]   # per choice; one for a greedy (lambada) item; none for a generated one
    gold: int | str                          # the gold choice's index, or (gsm8k) the reference answer's text
    norm_lengths: tuple[int, ...] = ()       # len(choice text) per choice (acc_norm)
    prompt: str | None = None                # a generated item's prompt


@dataclass(frozen=True)
class HubSource:
    path: str
    name: str | None
    split: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                 # "choice" (multiple choice), "greedy" (loglikelihood, lambada), "generate"
    hub: HubSource
    file: str                 # the shipped split, harness/tasks/data/<file>
    rows: int                 # the official split's row count, checked on every read of the shipped file
    sha256: str               # of the shipped file's JSON lines (uncompressed)
    metrics: tuple[str, ...]  # the first one is gated unless the config names another
    item: Callable[..., Item]
    lm_eval: str              # lm-evaluation-harness's task of the same definition (tests/test_tasks_lm_eval.py)
    fewshot_file: str | None = None
    fewshot_sha256: str | None = None
    fewshot_rows: int | None = None
    style: str = "lm-eval"    # whose prompts: "lm-eval" (the default), or "lighteval" (STYLES)


def _choice_item(query: str, choices: list[str], gold: int) -> Item:
    return Item(requests=tuple((query, DELIMITER + c) for c in choices), gold=gold,
                norm_lengths=tuple(len(c) for c in choices))


def arc_item(row: dict) -> Item:
    """lm-eval arc_easy.yaml: doc_to_text "Question: {{question}}\\nAnswer:", doc_to_choice choices.text, target
    choices.label.index(answerKey)."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ValueError(f"answerKey {row['answerKey']!r} is not one of the labels {labels}")
    return _choice_item(f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]),
                        labels.index(row["answerKey"]))


def piqa_item(row: dict) -> Item:
    """lm-eval piqa.yaml: "Question: {{goal}}\\nAnswer:", choices [sol1, sol2], target label."""
    return _choice_item(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]))


def hellaswag_preprocess(text: str, strip: bool = True) -> str:
    """lm-eval hellaswag/utils.py ``preprocess``: WikiHow's bracket artefacts removed (lighteval's copy of it, in
    huggingface/smollm's tasks.py, has the strip commented out: ``strip=False``)."""
    if strip:
        text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: dict) -> Item:
    """lm-eval hellaswag/utils.py ``process_docs``: query = preprocess(activity_label + ": " + ctx_a + " " +
    ctx_b.capitalize()), choices = preprocessed endings, gold = int(label)."""
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return _choice_item(hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                        [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def hellaswag_lighteval_item(row: dict) -> Item:
    """huggingface/smollm text/evaluation/smollm2/tasks.py ``prompt_hellaswag`` (lighteval): query =
    preprocess(activity_label + ": " + ctx_a + " " + Ctx_b + " ") and choices " " + preprocess(ending), where
    preprocess does not strip; acc_norm "nospace" divides by the choice without its leading space."""
    query = hellaswag_preprocess(row["activity_label"] + ": " + f"{row['ctx_a']} {row['ctx_b'].capitalize()} ",
                                 strip=False)
    endings = [hellaswag_preprocess(e, strip=False) for e in row["endings"]]
    return Item(requests=tuple((query, " " + e) for e in endings), gold=int(row["label"]),
                norm_lengths=tuple(len(e) for e in endings))


def winogrande_item(row: dict) -> Item:
    """lm-eval winogrande/preprocess_winogrande.py: the option fills the blank in the context (one context per
    option), the rest of the sentence after the blank is the shared continuation; gold = answer "1" or "2"."""
    s = row["sentence"]
    idx = s.index("_")
    target = s[idx + 1:].strip()
    contexts = [s[:idx] + opt for opt in (row["option1"], row["option2"])]
    return Item(requests=tuple((c, DELIMITER + target) for c in contexts), gold={"1": 0, "2": 1}[row["answer"]])


def lambada_item(row: dict) -> Item:
    """lm-eval lambada_openai.yaml: doc_to_text the text without its last space-separated word, doc_to_target
    " " + that word (output_type loglikelihood: no delimiter added)."""
    words = row["text"].split(" ")
    return Item(requests=((" ".join(words[:-1]), " " + words[-1]),), gold=0)


def gsm8k_question(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer:"


def gsm8k_item(row: dict, index: int = 0, shots: list[dict] | None = None) -> Item:
    """lm-eval gsm8k.yaml (5-shot): each example "Question: {q}\\nAnswer: {answer}", joined by a blank line, then the
    item's question; the reference is the text after "#### "."""
    parts = [gsm8k_question(s) + DELIMITER + s["answer"] for s in (shots or [])]
    prompt = FEWSHOT_DELIMITER.join(parts + [gsm8k_question(row)])
    return Item(requests=(), gold=row["answer"], prompt=prompt)


def gsm8k_shots(train: list[dict], n_items: int, k: int = 5) -> list[list[dict]]:
    """The few-shot examples of the first ``n_items`` items, as lm-eval draws them: one Random(1234) for the task,
    ``sample(train, k)`` per item in order (api/samplers.py, ContextSampler.sample: the few-shot split is not the
    evaluated one, so no eval_doc is passed and k, not k + 1, are drawn)."""
    rnd = random.Random(FEWSHOT_SEED)
    return [rnd.sample(train, k) for _ in range(n_items)]


# ---- GSM8K answers: lm-eval's strict-match filter and exact_match metric --------------------------------------------
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")   # gsm8k.yaml regexes_to_ignore, applied to both sides
UNTIL = ("Question:", "</s>", "<|im_end|>")    # gsm8k.yaml generation_kwargs.until
MAX_GEN_TOKS = 256                              # lm-eval's default max_gen_toks


def strict_match(generation: str) -> str:
    """The first "#### <number>" of a generation, or lm-eval's "[invalid]"."""
    m = STRICT.search(generation)
    return m.group(1).strip() if m else "[invalid]"


def normalise_answer(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()  # lm-eval's exact_match: ignore_case, no strip (the filter strips the match)


def exact_match(extracted: str, reference: str) -> bool:
    return normalise_answer(extracted) == normalise_answer(reference)


def cut_at_stop(text: str, until=UNTIL) -> str:
    """A generation up to its first stop sequence (lm-eval cuts there too)."""
    for s in until:
        if s in text:
            text = text.split(s, 1)[0]
    return text


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("arc_easy", "choice", HubSource("allenai/ai2_arc", "ARC-Easy", "test"), "arc_easy.jsonl.gz", 2376,
             "82cb6d6c4aa737eb81c699e8caee367b33874e9463368a9530cebdab0e74dd02", ("acc_norm", "acc"), arc_item,
             "arc_easy"),
    TaskSpec("arc_challenge", "choice", HubSource("allenai/ai2_arc", "ARC-Challenge", "test"), "arc_challenge.jsonl.gz",
             1172, "ceabd0708756c898d56c5337ad59df32b1bdbffcfb2fbdf68a7b4dc1c2e6771b", ("acc_norm", "acc"), arc_item,
             "arc_challenge"),
    TaskSpec("piqa", "choice", HubSource("baber/piqa", None, "validation"), "piqa.jsonl.gz", 1838,
             "c85e341b3fa35066f64f5e7838116fe1421484424e9ce20abb54496b69970ee2", ("acc", "acc_norm"), piqa_item, "piqa"),
    TaskSpec("hellaswag", "choice", HubSource("Rowan/hellaswag", None, "validation"), "hellaswag.jsonl.gz", 10042,
             "b9e27e4f11dfd40cc22c47eb71ed5dc765fbb9f2ad73ff32cbbb396ffcc040ab", ("acc_norm", "acc"), hellaswag_item,
             "hellaswag"),
    TaskSpec("winogrande", "choice", HubSource("allenai/winogrande", "winogrande_xl", "validation"),
             "winogrande.jsonl.gz", 1267, "107b28ed11d47c6ef804585e5f1998f2bf88e8e44e2fbbd52a3a4c4afaadc482", ("acc",),
             winogrande_item, "winogrande"),
    TaskSpec("lambada_openai", "greedy", HubSource("EleutherAI/lambada_openai", "default", "test"),
             "lambada_openai.jsonl.gz", 5153, "9acdcb12e8c2ef4eb3d0958b547a8c7076488df2d6ff460377881ab3841f3d97",
             ("acc", "perplexity"), lambada_item, "lambada_openai"),
    TaskSpec("gsm8k", "generate", HubSource("openai/gsm8k", "main", "test"), "gsm8k.jsonl.gz", 1319,
             "51b901a6559b123df91167acbe3ed6d6d5d404ee6fa0773a4da19fd9d44c767a", ("exact_match",), gsm8k_item, "gsm8k",
             fewshot_file="gsm8k_train.jsonl.gz",
             fewshot_sha256="9556bf9d7dba73d7fcaaeff6ca814c71684db1d8e8d485d83ec62f1c428b888d", fewshot_rows=7473),
)}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


STYLES = ("lm-eval", "lighteval")
LIGHTEVAL = {"arc_easy": arc_item, "arc_challenge": arc_item, "piqa": piqa_item, "hellaswag": hellaswag_lighteval_item}


def styled_spec(name: str, style: str = "lm-eval") -> TaskSpec:
    """The task ``name`` in a prompt style: lm-eval's own (as TASKS holds it), or lighteval's as the SmolLM2 cards
    ran it (LIGHTEVAL: those four tasks, acc_norm gated)."""
    spec = task_spec(name)
    if style == "lm-eval":
        return spec
    if style != "lighteval":
        raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(STYLES)}")
    if name not in LIGHTEVAL:
        raise ValueError(f"{name} has no lighteval style here; it has: {', '.join(LIGHTEVAL)}")
    return replace(spec, item=LIGHTEVAL[name], metrics=("acc_norm", "acc"), style="lighteval")


def make_item(spec: TaskSpec, row: dict, where: str) -> Item:
    """One row through its task's definition; a row that lacks what the task reads is a DataError naming ``where``
    (file:line)."""
    try:
        return spec.item(row)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{where}: not a {spec.name} row ({type(e).__name__}: {e}); expected the {spec.hub.path} "
                        "schema") from None
