"""Tasks (harness/tasks): the shipped splits, the prompts and answer rules, the encoding of requests, per-item
correctness, the paired statistics (hand-computed), the backends' loglikelihood, and bad input. The agreement with
lm-evaluation-harness itself is in test_tasks_lm_eval.py."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

import pytest

from harness.errors import BaselineError, ConfigError, DataError
from harness.tasks import TASKS, task_spec
from harness.tasks import definitions as D
from tests.test_vllm_start import fake_vllm  # noqa: F401 - the fixture
from harness.tasks import load, paired as P
from harness.tasks.prepare import build_items, encode_pair, prepare_task
from harness.tasks.results import TaskScore, item_correct, score_task

OFFICIAL_ROWS = {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
                 "lambada_openai": 5153, "gsm8k": 1319}  # the official splits' sizes (dataset cards)


# ---- the shipped data -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OFFICIAL_ROWS))
def test_shipped_split_is_whole_and_intact(name):
    rows, where = load.shipped_rows(task_spec(name))
    assert len(rows) == OFFICIAL_ROWS[name]
    text = gzip.decompress(Path(where).read_bytes())
    assert hashlib.sha256(text).hexdigest() in (load.DATA_DIR / "README.md").read_text()  # documented with its source


def test_shipped_rows_read_as_their_hub_schema():
    """The first rows as the public copies hold them (their first lines, read by hand)."""
    arc = load.shipped_rows(TASKS["arc_easy"])[0][0]
    assert arc["question"] == "Which statement best explains why photosynthesis is the foundation of most food webs?"
    assert arc["answerKey"] == "A" and arc["choices"]["text"][0].startswith("Sunlight is the source")
    wino = load.shipped_rows(TASKS["winogrande"])[0][0]
    assert wino == {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                    "option1": "Sarah", "option2": "Maria", "answer": "2"}
    lam = load.shipped_rows(TASKS["lambada_openai"])[0][0]
    assert lam["text"].endswith("I don't care about signs")
    gsm = load.shipped_rows(TASKS["gsm8k"])[0][0]
    assert gsm["answer"].endswith("#### 18")
    assert len(load.fewshot_rows(TASKS["gsm8k"])) == 7473


def test_damaged_or_malformed_data_names_the_file_and_line(tmp_path):
    good = load.shipped_path("winogrande.jsonl.gz")
    bad = tmp_path / "winogrande.jsonl.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-200]))
    with pytest.raises(DataError, match=r"winogrande.jsonl.gz: damaged \(sha256 .*reinstall"):
        load.read_json_lines(bad, TASKS["winogrande"].sha256, 1267)
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="winogrande.jsonl.gz: unreadable"):
        load.read_json_lines(bad)
    rows = tmp_path / "mine.jsonl"
    rows.write_text('{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n\n{"goal": "a", "sol1"\n')
    with pytest.raises(DataError, match=r"mine.jsonl:3: not a JSON object"):
        load.read_json_lines(rows)
    rows.write_text("")
    with pytest.raises(DataError, match="mine.jsonl: holds no rows"):
        load.read_json_lines(rows)
    with pytest.raises(DataError, match="not found"):
        load.read_json_lines(tmp_path / "gone.jsonl")
    rows.write_text('{"goal": "a", "sol1": "b"}\n')
    with pytest.raises(DataError, match=r"mine.jsonl:1: not a piqa row \(KeyError: 'sol2'\)"):
        build_items(TASKS["piqa"], load.read_json_lines(rows), str(rows), None)


# ---- prompts and answers (lm-eval's task YAMLs, read by hand) -----------------------------------------------------
def test_prompts_follow_lm_eval_definitions():
    arc = D.arc_item({"question": "Q?", "choices": {"text": ["x", "yy"], "label": ["1", "2"]}, "answerKey": "2"})
    assert arc.requests == (("Question: Q?\nAnswer:", " x"), ("Question: Q?\nAnswer:", " yy"))
    assert arc.gold == 1 and arc.norm_lengths == (1, 2)
    hs = D.hellaswag_item({"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                           "ctx_b": "he", "endings": ["is [title] ripping  tiles off.", "b"], "label": "0"})
    # capitalised ctx_b; " [title]" -> ". ", brackets dropped, double spaces single
    assert hs.requests[0] == ("Roof shingle removal: A man is sitting on a roof. He", " is. ripping tiles off.")
    wg = D.winogrande_item({"sentence": "A beat B so _ won.", "option1": "A", "option2": "B", "answer": "1"})
    assert wg.requests == (("A beat B so A", " won."), ("A beat B so B", " won.")) and wg.gold == 0
    lam = D.lambada_item({"text": "the cat sat on the mat"})
    assert lam.requests == (("the cat sat on the", " mat"),)
    gsm = D.gsm8k_item({"question": "1+1?", "answer": "x\n#### 2"},
                       shots=[{"question": "2+2?", "answer": "4\n#### 4"}])
    assert gsm.prompt == "Question: 2+2?\nAnswer: 4\n#### 4\n\nQuestion: 1+1?\nAnswer:"


def test_gsm8k_strict_match_and_exact_match():
    assert D.strict_match("so 3 + 4 = 7\n#### 7\nQuestion") == "7"
    assert D.strict_match("The answer is 7.") == "[invalid]"
    assert D.strict_match("#### -1,234.5 apples") == "-1,234.5"
    assert D.exact_match("1,234", "step\n#### 1234")          # commas ignored on both sides
    assert D.exact_match("$18.", "Janet ... #### 18")          # "$" and a final "." ignored
    assert not D.exact_match("18.0", "#### 18")
    assert not D.exact_match("[invalid]", "#### 18")
    assert D.cut_at_stop("a\n#### 5\n\nQuestion: next") == "a\n#### 5\n\n"


def test_gsm8k_shots_are_drawn_as_lm_eval_draws_them():
    """One Random(1234) for the task; per item sample(pool, 5): the few-shot split is not the evaluated one, so
    lm_eval/api/samplers.py draws exactly 5 (test_tasks_lm_eval.py checks the prompts against lm-eval's own)."""
    import random

    pool = [{"question": str(i), "answer": str(i)} for i in range(40)]
    rnd = random.Random(1234)
    expect = [rnd.sample(pool, 5) for _ in range(3)]
    assert D.gsm8k_shots(pool, 3) == expect
    assert D.gsm8k_shots(pool, 3)[0] != D.gsm8k_shots(pool, 3)[1]


def test_encode_pair_moves_trailing_space_to_the_continuation():
    class Chars:  # one token per character: the split is visible
        def encode(self, text, add_special_tokens=True):
            return ([0] if add_special_tokens else []) + [ord(c) for c in text]

    ctx, cont = encode_pair(Chars(), "Answer: ", "yes")
    assert ctx == [0] + [ord(c) for c in "Answer:"] and cont == [ord(c) for c in " yes"]
    ctx, cont = encode_pair(Chars(), "Answer:", " yes", add_special_tokens=False)
    assert ctx == [ord(c) for c in "Answer:"] and cont == [ord(c) for c in " yes"]
    items = [D.lambada_item({"text": "a b c d"})]
    p = prepare_task(TASKS["lambada_openai"], items, Chars(), max_model_len=4, add_special_tokens=True, source="s",
                     tokenizer_id="chars")
    # [BOS] a _ b _ c | _ d: 8 tokens, the last 4 kept (the context's oldest dropped, as lm-eval drops them)
    assert p.requests == (((ord(" "), ord("c")), (ord(" "), ord("d"))),)


# ---- correctness per item -----------------------------------------------------------------------------------------
def _prep(kind, items, metrics):
    from harness.tasks.prepare import PreparedTask

    return PreparedTask(name="t", kind=kind, metrics=metrics, items=tuple(items), requests=(), owners=(), prompts=(),
                        fingerprint="f", source="s", tokenizer_id="x")


def test_acc_and_acc_norm_can_disagree():
    """lls -10 and -12 over choices of 2 and 20 characters: acc picks the first, acc_norm (-5 vs -0.6) the second."""
    item = D.Item(requests=(("q", " ab"), ("q", " " + "x" * 20)), gold=1, norm_lengths=(2, 20))
    c = item_correct(_prep("choice", [item], ("acc", "acc_norm")), [[-10.0, -12.0]], [[False, False]])
    assert c == {"acc": [0], "acc_norm": [1]}
    tie = item_correct(_prep("choice", [item], ("acc",)), [[-3.0, -3.0]], [[False, False]])
    assert tie == {"acc": [0]}  # a tie goes to the first choice (numpy.argmax), which is not gold here


def test_greedy_task_counts_only_all_greedy_targets():
    items = [D.Item(requests=(("a", " b"),), gold=0)] * 2
    c = item_correct(_prep("greedy", items, ("acc", "perplexity")), [[-1.0], [-2.0]], [[True], [False]])
    assert c == {"acc": [1, 0]}
    s = TaskScore(task="lambada_openai", correct=c, lls=[[-1.0], [-2.0]], greedy=[[True], [False]], perplexity=True)
    assert s.metrics()["perplexity"] == pytest.approx(math.exp(1.5))  # exp(-mean target log-likelihood)


# ---- paired statistics, by hand ---------------------------------------------------------------------------------
def test_mcnemar_exact_p_values_by_hand():
    assert P.mcnemar_p(0, 5) == pytest.approx(2 * 0.5 ** 5)             # 0.0625
    assert P.mcnemar_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)      # 22/1024
    assert P.mcnemar_p(2, 1) == pytest.approx(1.0)
    assert P.mcnemar_p(0, 0) == 1.0


def test_flips_recovery_and_mdd_by_hand():
    ref = [1, 1, 1, 0, 0, 1, 0, 1, 1, 1]
    new = [1, 0, 1, 0, 1, 1, 0, 0, 1, 1]   # lost at 1 and 7, gained at 4
    p = P.paired(ref, new, samples=2000, seed=1)
    assert (p.lost, p.gained, p.n) == (2, 1, 10)
    assert p.acc_ref == 0.7 and p.acc_model == 0.6 and p.recovery == pytest.approx(6 / 7)
    assert p.flips_pct == pytest.approx(30.0)
    lo, hi = p.recovery_interval
    assert lo <= 6 / 7 <= hi and lo < hi  # the interval holds the point estimate
    assert P.mdd(100, 0.1) == pytest.approx((1.6448536 + 0.8416212) * math.sqrt(0.1 / 100), rel=1e-6)
    assert P.mdd(100, 0.0) == P.mdd(100, 0.01)  # no flips seen: one item's worth of discordance assumed
    assert P.items_needed(0.01, 0.01) == math.ceil((1.6448536 + 0.8416212) ** 2 / 0.01)  # 619
    # a bootstrap interval 99.00 .. 99.84 at 95%: SE = 0.84 / (2 x 1.959964), MDD = 2.4864748 x SE
    assert P.mdd_from_interval(99.0, 99.84, 0.95) == pytest.approx(2.4864748 * 0.84 / 3.919928, rel=1e-6)


def test_recovery_where_bf16_got_nothing_right():
    assert P.paired([0, 0], [0, 0]).recovery == 1.0           # nothing to lose
    assert P.paired([0, 0], [1, 0]).recovery == math.inf
    same = P.paired([1, 0, 1, 1], [1, 0, 1, 1])
    assert same.recovery_interval == (1.0, 1.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="not the same items"):
        P.paired([1], [1, 0])


# ---- the backends' loglikelihood ------------------------------------------------------------------------------------
def test_loglikelihood_sums_the_continuation_and_checks_greedy():
    import numpy as np

    from harness.backends.base import Backend, DocResult, EngineSpec

    class Table(Backend):
        """log p(token t at position i) = -(t + i) / 10; the top-1 token at every position is token 5."""
        name = "table"

        def loglikelihood_rolling(self, docs, progress=None, token_logprobs=False, top_k=0):
            out = []
            for d in docs:
                lps = [-(t + i) / 10 for i, t in enumerate(d) if i]
                out.append(DocResult(sum(lps), len(d) - 1, lps, np.full((len(d) - 1, 1), 5), None))
            return out

        def info(self):
            return {}

    b = Table(EngineSpec(model="m", precision="bf16", max_model_len=8))
    res = b.loglikelihood([([1, 2], [5, 5]), ([3], [5, 7])])
    assert res[0] == (pytest.approx(-(7 + 8) / 10), True)   # tokens 5 at positions 2 and 3
    assert res[1] == (pytest.approx(-(6 + 9) / 10), False)  # 7 is not the top-1
    with pytest.raises(Exception, match="empty continuation"):
        b.loglikelihood([([1], [])])
    with pytest.raises(Exception, match="needs a context token"):  # its first token would go unscored
        b.loglikelihood([([], [5, 5])])


def test_score_task_asks_a_repeated_request_once():
    calls = []

    class Engine:
        def loglikelihood(self, reqs, progress=None):
            calls.append(reqs)
            return [(-1.0, False) for _ in reqs]

    from harness.tasks.prepare import PreparedTask

    item = D.Item(requests=(("a", " b"), ("a", " b")), gold=0, norm_lengths=(1, 1))
    prep = PreparedTask(name="piqa", kind="choice", metrics=("acc",), items=(item,), requests=(((1,), (2,)),) * 2,
                        owners=(0, 0), prompts=(), fingerprint="f", source="s", tokenizer_id="x")
    s = score_task(Engine(), prep)
    assert len(calls[0]) == 1 and s.lls == [[-1.0, -1.0]]


# ---- config and baselines -------------------------------------------------------------------------------------------
def test_config_refuses_unknown_tasks_metrics_and_thresholds_out_of_range(root):
    from harness.config.load import load_config

    cfg = root / "configs/tiny.yaml"
    with pytest.raises(ConfigError, match="unknown task 'arc_eazy' \\(did you mean 'arc_easy'\\?\\); known tasks: "
                                          "arc_challenge, arc_easy, gsm8k, hellaswag"):
        load_config(cfg, {"tasks": {"arc_eazy": {}}})
    with pytest.raises(ConfigError, match="recovery_min: Input should be less than or equal to 1"):
        load_config(cfg, {"tasks": {"piqa": {"recovery_min": 95}}})
    with pytest.raises(ConfigError, match="flips_max_pct: Input should be less than or equal to 100"):
        load_config(cfg, {"tasks": {"piqa": {"flips_max_pct": 101}}})
    with pytest.raises(ConfigError, match="unknown metric 'acc_norm'; choose from acc"):
        load_config(cfg, {"tasks": {"winogrande": {"metric": "acc_norm"}}})
    assert load_config(cfg, {"tasks": {"piqa": {"limit": 5}}}).tasks["piqa"].recovery_min == 0.95


def test_task_baseline_round_trip_and_refusals(tmp_path):
    from harness.tasks import baseline as tb

    b = tb.TaskBaseline(model="m", task="piqa", fingerprint="f1", n=3, metrics={"acc": 2 / 3},
                        correct={"acc": [1, 0, 1]}, lls=[[-1.0, -2.0]] * 3)
    p = tb.write(tmp_path, b)
    assert p == tmp_path / "m" / "tasks" / "piqa.json"
    assert tb.load(p, "m", "piqa", "HINT").correct == {"acc": [1, 0, 1]}
    with pytest.raises(BaselineError, match="task baseline not found: .*arc_easy.json.*\n  create it with: HINT"):
        tb.load(tmp_path / "m" / "tasks" / "arc_easy.json", "m", "arc_easy", "HINT")
    d = json.loads(p.read_text())
    d["metrics"]["acc"] = 1.0
    p.write_text(json.dumps(d))
    with pytest.raises(BaselineError, match="acc 1.0 is not the mean of its items"):
        tb.load(p, "m", "piqa", "HINT")

    class Prep:
        fingerprint, n = "f2", 3

    with pytest.raises(BaselineError, match="scored on 3 items \\(fingerprint f1\\).*fingerprint f2.*HINT"):
        tb.check_matches(b, Prep(), p, "HINT")


def test_vllm_continuation_is_read_from_the_last_positions_of_flat_prompt_logprobs():
    """prompt_logprobs=1 (vllm/logprobs.py): position 0 empty, then per position the prompt token first and the
    top-1 second, also when they are the same token. Only the continuation's positions count."""
    from harness.backends.vllm_outputs import continuation_result
    from harness.errors import BackendError
    from tests.test_distributions import FlatLogprobs

    ids = [5, 7, 9, 4]  # context [5, 7], continuation [9, 4]
    flat = FlatLogprobs([[(7, -9.0), (2, -0.1)],     # a context position: never read
                         [(9, -0.5), (9, -0.5)],     # the prompt token is the top-1
                         [(4, -2.0), (8, -0.3)]])    # not the top-1
    assert continuation_result(flat, ids, 2) == (-2.5, False)
    assert continuation_result(flat, ids, 1) == (-2.0, False)
    assert continuation_result(FlatLogprobs([[(7, -9.0), (2, -0.1)], [(9, -0.5), (9, -0.5)], [(4, -2.0), (4, -2.0)]]),
                               ids, 2) == (-2.5, True)
    with pytest.raises(BackendError, match="expected the prompt token 4 and the top-1 at position 3"):
        continuation_result(FlatLogprobs([[(7, -9.0), (2, -0.1)], [(9, -0.5), (9, -0.5)], [(4, -2.0)]]), ids, 2)
    with pytest.raises(BackendError, match="positions, prompt has 4"):
        continuation_result(FlatLogprobs([[(7, -9.0), (2, -0.1)]]), ids, 1)
    with pytest.raises(BackendError, match="non-finite"):
        continuation_result(FlatLogprobs([[(7, -9.0), (2, -0.1)], [(9, -0.5), (9, -0.5)],
                                          [(4, float("-inf")), (8, -0.3)]]), ids, 1)


def test_vllm_continuation_after_a_prefix_cache_hit_is_read_where_vllm_put_it():
    """A request that read c tokens from vLLM's prefix cache is scored from position c + 1 on. The V2 runner
    (vllm/v1/worker/gpu/sample/prompt_logprob.py) returns the empty position 0 and then only those positions; the
    V1 runner (gpu_model_runner.py) returns every position, the cached ones unfilled. A continuation position at or
    before c was not scored at all: None, the caller scores the request again."""
    from harness.backends.vllm_outputs import continuation_result
    from harness.errors import BackendError
    from tests.test_distributions import FlatLogprobs

    ids = [5, 7, 3, 9, 4]  # context [5, 7, 3], continuation [9, 4]; 2 tokens from the cache: positions 3, 4 scored
    v2 = FlatLogprobs([[(9, -0.5), (9, -0.5)], [(4, -2.0), (8, -0.3)]])  # [empty, position 3, position 4]
    assert continuation_result(v2, ids, 2, cached=2) == (-2.5, False)
    v1 = FlatLogprobs([[(0, 0.0), (0, 0.0)], [(0, 0.0), (0, 0.0)], [(9, -0.5), (9, -0.5)], [(4, -2.0), (4, -2.0)]])
    assert continuation_result(v1, ids, 2, cached=2) == (-2.5, True)
    assert continuation_result(FlatLogprobs([[(4, -2.0), (8, -0.3)]]), ids, 2, cached=3) is None  # position 3 unscored
    assert continuation_result(FlatLogprobs([[(4, -2.0), (8, -0.3)]]), ids, 1, cached=3) == (-2.0, False)
    with pytest.raises(BackendError, match="2 positions, prompt has 5 \\(2 of them from the prefix cache\\)"):
        continuation_result(FlatLogprobs([[(9, -0.5), (9, -0.5)]]), ids, 2, cached=2)


class PrefixCachingLLM:
    """vLLM 0.26's prefix cache as the V2 runner shows it, on a toy model: full blocks of BLOCK tokens whose whole
    prefix an earlier request computed are read from the cache (never the last token), unless the request's
    ``skip_reading_prefix_cache`` (vLLM's default for prompt-logprob requests: True); only positions past the cached
    tokens get prompt logprobs. Token i's log-probability depends on the whole prefix, so reading a wrong position
    gives a wrong number."""

    BLOCK = 4

    def __init__(self):
        self.blocks: set[tuple[int, ...]] = set()
        self.calls: list[tuple[int, bool]] = []  # (requests, read the cache)

    @staticmethod
    def logprob(prefix) -> float:
        return -((sum((i + 1) * t for i, t in enumerate(prefix)) % 97) + 1) / 10

    @staticmethod
    def top1(prefix) -> int:
        return prefix[-1] if sum(prefix) % 3 else -1  # the prompt token is the greedy one unless the sum is 0 mod 3

    def generate(self, prompts, params, use_tqdm=True):
        import types

        from tests.test_distributions import FlatLogprobs

        skip = params.get("skip_reading_prefix_cache")
        read = not (params.get("prompt_logprobs") is not None if skip is None else skip)
        self.calls.append((len(prompts), read))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            cached = 0
            if read:
                while cached + self.BLOCK < len(ids) and tuple(ids[: cached + self.BLOCK]) in self.blocks:
                    cached += self.BLOCK
            for b in range(self.BLOCK, len(ids) + 1, self.BLOCK):
                self.blocks.add(tuple(ids[:b]))
            rows = [[(ids[i], self.logprob(ids[: i + 1])), (self.top1(ids[: i + 1]), -0.01)]
                    for i in range(cached + 1, len(ids))]
            outs.append(types.SimpleNamespace(prompt_logprobs=FlatLogprobs(rows), num_cached_tokens=cached))
        return outs


@pytest.mark.parametrize("share", [True, False])
def test_vllm_task_requests_share_their_context_and_score_what_the_cache_cut_again(fake_vllm, monkeypatch, share):
    from harness.backends.vllm import VLLMBackend
    from tests.test_vllm_start import _backend

    engine = PrefixCachingLLM()
    monkeypatch.setattr(fake_vllm, "generate", lambda self, prompts, params, use_tqdm=True:
                        engine.generate(prompts, params, use_tqdm))
    monkeypatch.setattr(fake_vllm, "reset_prefix_cache", lambda self: engine.blocks.clear())
    backend = _backend({} if share else {"enable_prefix_caching": False})
    assert isinstance(backend, VLLMBackend)
    assert fake_vllm.seen[-1]["kwargs"]["enable_prefix_caching"] is share
    ctx = [11, 12, 13, 14, 15, 16, 17, 18, 19]           # 9 tokens: two whole blocks shared by every choice
    whole = [21, 22, 23, 24]                              # a context of exactly one block
    requests = [(ctx, [1, 2]), (ctx, [3]), (ctx, [1, 2, 5]),  # the third begins like the first
                (whole, [7, 8]), (whole, [9])]               # the second reads the block: its position 4 unscored
    engine.calls.clear()
    got = backend.loglikelihood(requests)
    want = []
    for c, t in requests:
        d = c + t
        want.append((sum(engine.logprob(d[: i + 1]) for i in range(len(c), len(d))),
                     all(engine.top1(d[: i + 1]) == d[i] for i in range(len(c), len(d)))))
    assert got == [pytest.approx(w) for w in want]
    if share:  # 2nd and 3rd read ctx's 8; the 3rd's [..19, 1, 2] block is not whole; whole's 2nd: 4 -> again
        assert engine.calls == [(5, True), (1, False)]
        assert backend.shared == {"requests": 5, "tokens": 44, "cached_tokens": 16, "scored_again": 1}
        engine.calls.clear()  # the same requests again in this engine: hits from this call only, the same numbers
        assert backend.loglikelihood(requests) == got and engine.calls == [(5, True), (1, False)]
    else:
        assert engine.calls == [(5, False)]
        assert backend.shared == {"requests": 5, "tokens": 44, "cached_tokens": 0, "scored_again": 0}


def test_a_generated_task_on_data_parallel_engines_is_refused_before_anything_starts(root):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    cfg = load_config(root / "configs/tiny.yaml", {"tasks": {"gsm8k": {"limit": 2}}, "backend": "vllm",
                                                  "model.engine.nvfp4.vllm.data_parallel_size": 2})
    s = GateSession(cfg, quiet=True)
    with pytest.raises(ConfigError, match=r"tasks.gsm8k is generated.*data_parallel_size > 1\) have no generation path"):
        s.preflight()
    assert s.engines.opened == [] and not [k for k in s._memo if k[0] == "task_items"]


# ---- the lighteval style (the SmolLM2 model cards' setting) -----------------------------------------------------
HELLASWAG_ROW = {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
                 "ctx_b": "then", "label": "1",
                 "endings": [", the man adds wax.", "[header] How to scrape [title] Use a scraper."]}


def test_lighteval_hellaswag_prompt_keeps_its_trailing_space_by_hand():
    """huggingface/smollm text/evaluation/smollm2/tasks.py prompt_hellaswag, worked by hand: the query is
    label + ": " + ctx_a + " " + Ctx_b + " " (not stripped), each choice " " + ending with " [title]" -> ". " and
    [...] removed; lm-eval's query has no trailing space. acc_norm divides by the ending without its leading space."""
    lm_eval = D.hellaswag_item(HELLASWAG_ROW)
    lighteval = D.styled_spec("hellaswag", "lighteval").item(HELLASWAG_ROW)
    q = "Removing ice from car: Then, the man writes over the snow. Then"
    assert lm_eval.requests[1] == (q, "  How to scrape. Use a scraper.")  # lm-eval strips before the replacements
    assert lighteval.requests == ((q + " ", " , the man adds wax."), (q + " ", "  How to scrape. Use a scraper."))
    assert lighteval.norm_lengths == (len(", the man adds wax."), len(" How to scrape. Use a scraper."))
    assert lighteval.gold == 1
    # ARC and PIQA: lighteval's default_prompts.arc / piqa_harness are lm-eval's prompts, "nospace" its lengths
    row = {"question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"}
    assert D.styled_spec("arc_easy", "lighteval").item(row) == D.arc_item(row)
    assert D.styled_spec("piqa", "lighteval").metrics[0] == "acc_norm"  # the card's PIQA is acc_norm, lm-eval's acc
    with pytest.raises(ValueError, match="winogrande has no lighteval style here; it has: arc_easy, arc_challenge"):
        D.styled_spec("winogrande", "lighteval")


class ChatTokenizer:
    """A character tokenizer (one id per character) with a chat template: what apply_chat_template returns is
    written out here by hand."""

    chat_template = "<u>{content}</u><a>\n"
    name_or_path = "chat-chars"

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert messages == [{"role": "user", "content": messages[0]["content"]}] and add_generation_prompt
        return self.chat_template.format(content=messages[0]["content"])


def test_a_chat_template_wraps_each_context_and_its_newline_moves_to_the_continuation():
    """lighteval --use_chat_template: the context is one user turn, the assistant's turn opened after it; the
    template's trailing newline is whitespace, which tok_encode_pair (as lm-eval's _encode_pair) moves to the
    continuation."""
    from harness.tasks.prepare import prepare_task

    spec = D.styled_spec("arc_easy", "lighteval")
    item = D.Item(requests=(("Question: x?\nAnswer:", " a"), ("Question: x?\nAnswer:", " bc")), gold=1,
                  norm_lengths=(1, 2))
    plain = prepare_task(spec, [item], ChatTokenizer(), max_model_len=64, add_special_tokens=False, source="s",
                         tokenizer_id="t")
    chat = prepare_task(spec, [item], ChatTokenizer(), max_model_len=64, add_special_tokens=False, source="s",
                        tokenizer_id="t", chat_template=True, name="arc_card")
    text = lambda ids: "".join(map(chr, ids))  # noqa: E731
    assert [(text(c), text(t)) for c, t in chat.requests] == [("<u>Question: x?\nAnswer:</u><a>", "\n a"),
                                                              ("<u>Question: x?\nAnswer:</u><a>", "\n bc")]
    assert [(text(c), text(t)) for c, t in plain.requests] == [("Question: x?\nAnswer:", " a"),
                                                               ("Question: x?\nAnswer:", " bc")]
    assert chat.name == "arc_card" and chat.fingerprint != plain.fingerprint

    class NoTemplate(ChatTokenizer):
        chat_template = None

    with pytest.raises(DataError, match="tokenizer 'chat-chars' has no chat template; set chat_template: false"):
        prepare_task(spec, [item], NoTemplate(), max_model_len=64, add_special_tokens=False, source="s",
                     tokenizer_id="t", chat_template=True)


def test_task_entries_name_their_task_style_and_template(root):
    from harness.config.load import load_config

    def cfg(tasks: dict):
        return load_config(root / "configs/tiny.yaml", overrides={"tasks": tasks})

    c = cfg({"hellaswag": {}, "hellaswag_card": {"task": "hellaswag", "style": "lighteval", "chat_template": True}})
    assert c.tasks["hellaswag_card"].definition("hellaswag_card") == "hellaswag"
    for tasks, msg in (({"winogrande": {"style": "lighteval"}}, "tasks.winogrande.style: winogrande has no lighteval"),
                       ({"piqa": {"style": "helm"}}, "tasks.piqa.style: unknown prompt style 'helm'; choose from "
                                                     "lm-eval, lighteval"),
                       ({"gsm8k": {"chat_template": True}}, "tasks.gsm8k.chat_template: gsm8k is generated"),
                       ({"card": {"task": "hellaswg"}}, "tasks.card.task: unknown task 'hellaswg' \\(did you mean "
                                                        "'hellaswag'\\?\\)"),
                       ({"card": {}}, "unknown task 'card'")):
        with pytest.raises(ConfigError, match=msg):
            cfg(tasks)
