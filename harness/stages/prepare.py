"""The first stage of a gate: the config's datasets loaded, selected and tokenized by the data rules (harness.data.rules),
with their statistics logged and checked, ready to score."""
from __future__ import annotations

from harness.data.rules import PreparedDataset, TokenRules, prepare_texts, select_texts
from harness.data.files import load_rows
from harness.errors import HarnessError, unknown_name


def load_tokenizer(cfg, source=None):
    """The model's tokenizer (model.tokenizer, else the model's own), from ``source`` where the run located the model
    (harness.config.locate.ModelSource; a process of its own locates it again)."""
    from transformers import AutoTokenizer

    m = cfg.model
    path = source.tokenizer_path if source is not None else cfg.resolve(m.tokenizer or m.path)
    try:
        return AutoTokenizer.from_pretrained(path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot load tokenizer {path!r}: {str(e)[:300]}\n  hint: check model.path / "
                           "model.tokenizer; offline runs need a local dir or a warm HF cache") from None


def prepare_dataset(cfg, name: str, tokenizer, log=print) -> PreparedDataset:
    if name not in cfg.datasets:
        raise unknown_name("dataset", name, cfg.datasets)
    d = cfg.datasets[name]
    s = d.source
    path = cfg.resolve(s.path)  # a local copy, a builder name ("parquet") or a hub dataset id
    rows = load_rows(path, split=s.split, name=s.name, revision=s.revision, data_files=cfg.resolve_files(s.data_files))
    texts = select_texts(d.rule, rows, d.n_texts)
    rules = TokenRules(n_texts=d.n_texts, max_model_len=cfg.model.max_model_len, min_tokens=d.min_tokens,
                       truncation_margin=d.truncation_margin, add_special_tokens=cfg.model.add_special_tokens)
    source = {"path": s.path, "name": s.name, "split": s.split, "revision": s.revision}
    p = prepare_texts(name, d.rule, texts, tokenizer, rules, source=source)
    st = p.stats
    log(f"{name}: {st.kept_texts} texts kept of {st.selected} selected ({st.requested} requested), "
        f"{st.dropped_short} dropped < {d.min_tokens} tokens, {st.truncated} truncated, "
        f"{st.tokens} scored tokens, fingerprint {p.fingerprint}")
    if st.selected < st.requested:
        log(f"warning: {name}: the source has only {st.selected} usable texts, {st.requested} requested")
    if st.kept_texts < d.min_kept_texts:
        raise HarnessError(f"{name}: only {st.kept_texts} texts survive the rules ({st.selected} selected, "
                           f"{st.dropped_short} under {d.min_tokens} tokens); min_kept_texts is "
                           f"{d.min_kept_texts}. Raise n_texts or check the data source.")
    return p
