"""Build the embedded tiny default: BPE tokenizer + 2-layer Qwen2 trained to its entropy floor on the corpus.

    python -m harness.tiny.build --out harness/tiny/model      # rebuilds the shipped model (about 30 s on 2 cores)

The shipped model under ``harness/tiny/model`` was made by exactly this command; the stored tiny baselines were
scored on it. A rebuild on another torch version gives slightly different weights, so rebuilding means
updating the tiny baselines too (``harness baseline update``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.atomic import atomic_dir
from harness.tiny.corpus import ULTRACHAT_SPLITS, WIKITEXT_SPLITS, ultrachat_rows, wikitext_rows

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
)


def training_texts() -> list[str]:
    seed, n = WIKITEXT_SPLITS["train"]
    # the rows as the harness scores them (data.first_nonempty_texts strips each row): a model trained on the raw
    # rows (" text \n") meets a start and an end it never saw, and quantization noise then helps it by chance
    texts = [t.strip() for t in wikitext_rows(seed, n) if t.strip()]
    seed, n = ULTRACHAT_SPLITS["train_sft"]
    for i, row in enumerate(ultrachat_rows(seed, n)):  # both formats the harness uses: scoring and calibration
        if i % 2:
            texts.append("".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"]))
        else:
            texts.append("\n".join(f"{m['role']}: {m['content']}" for m in row["messages"]))
    return texts


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, model_max_length=4096
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train(out: Path, steps: int = 600, seed: int = 0, vocab_size: int = 512, seq_len: int = 128, batch: int = 32,
          lr: float = 3e-3, log=print) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    texts = training_texts()
    tok = build_tokenizer(texts, vocab_size)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [eos]
    data = torch.tensor(stream[: (len(stream) // seq_len) * seq_len]).view(-1, seq_len)
    cfg = Qwen2Config(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False, rope_theta=10000.0,
        bos_token_id=eos, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=eos, **MODEL_SHAPE,
    )
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        x = data[idx]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d} loss {loss.item():.4f} ({time.time() - t0:.1f}s)")
    model = model.to(torch.bfloat16)

    with atomic_dir(Path(out), prefix=".build-", on_exists="replace") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {"steps": steps, "seed": seed, "vocab_size": len(tok), "seq_len": seq_len, "batch": batch, "lr": lr,
                "final_loss_mean_last50": sum(losses[-50:]) / len(losses[-50:]), "train_s": round(time.time() - t0, 1),
                "torch": torch.__version__, "shape": MODEL_SHAPE}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.tiny.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "model", help="model dir to (re)write")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args(argv)
    info = train(a.out, steps=a.steps, seed=a.seed, vocab_size=a.vocab_size, lr=a.lr)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
