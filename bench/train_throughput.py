"""Trainer tokens/s and model FLOPs utilisation: the sparse KD loss against CE-only.

    python bench/train_throughput.py [--student small|100m] [--steps 30] [--batch 16]
                                     [--k 64] [--vocab 32000] [--rows 1024] [--bf16]
                                     [--chunks 0,4096]

A synthetic label set (``bench/loader.py``'s: random rows of 256 tokens, 192 of them labelled
with top-k log-probs over vocabulary V; no teacher involved) and a Llama student of fresh
weights: "small" (hidden 512, 4 layers, 29M parameters at V = 32k, for a CPU) or "100m"
(hidden 768, 12 layers, 12 heads, tied embeddings: about 110M). `kd train` runs twice on the
same rows, seed and steps, on the device it picks (CUDA when there is one): ``--lambda 1`` (CE
only: the KD term is not computed) and ``--lambda 0.5`` (CE + forward KL on the top-k with
the tail bucket), each in a fresh process; with ``--chunks`` both again for each
``chunk_positions`` listed (0 = the device's default, ``student_train.train.chunk_for``).

tokens/s = input tokens of the steps after the first 3 / the sum of their step times
(metrics.jsonl's ``step_s``). Model FLOPs = 3 x the forward's (``pipeline.plan.teacher_cost``
of the student's config: linear layers and attention over every input token, the LM head over
the labelled positions only, as the chunked loss runs it); the losses' own elementwise work is
not model FLOPs, so what KD costs shows as a lower MFU. MFU = model FLOP/s / the device's peak:
on CUDA the dense BF16 data-sheet peak of ``pipeline.plan.PEAK_TFLOPS`` for an H100 / A100 / L4
(with ``--bf16``; fp32 runs are not given an MFU there), on the CPU the plan's assumed per-core
peak. Prints one JSON line per run and the KD / CE-only ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SKIP = 3  # warm-up steps left out of the timing
SEQ, RESP = 256, 192
STUDENTS = {"small": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
                      "num_attention_heads": 8},
            "100m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 12}}


def student_config(name: str, vocab: int) -> dict:
    s = STUDENTS[name]
    return {"model_type": "llama", **s, "num_key_value_heads": s["num_attention_heads"],
            "head_dim": s["hidden_size"] // s["num_attention_heads"],
            "max_position_embeddings": SEQ, "vocab_size": vocab, "tie_word_embeddings": True,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def peak_flops(bf16: bool) -> tuple[float | None, str]:
    import torch
    from pipeline import plan
    if not torch.cuda.is_available():
        return plan.cpu_peak()
    name = torch.cuda.get_device_name()
    gpu = next((g for g in plan.PEAK_TFLOPS if g in name.lower()), None)
    if gpu is None or not bf16:
        return None, f"{name}: no peak known for this device and precision"
    return plan.PEAK_TFLOPS[gpu] * 1e12, f"{name}: {gpu} dense BF16 peak (data sheet)"


def run(labels: str, student: str, out: str, args, lam: float, chunk: int) -> list[dict]:
    config = out + ".yaml"
    with open(config, "w") as f:
        f.write(f"chunk_positions: {chunk}\n")
    cmd = [f"{BIN}/kd", "train", "--config", config, "--labels", labels, "--student", student,
           "--out", out,
           "--steps", str(args.steps), "--seed", "0", "--batch-size", str(args.batch),
           "--lambda", str(lam), *(["--bf16"] if args.bf16 else [])]
    subprocess.run(cmd, check=True, capture_output=True)
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", choices=sorted(STUDENTS), default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="rows per step")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rows", type=int, default=1024, help="rows of the synthetic label set")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--chunks", default="0", help="chunk_positions values, comma-separated")
    args = ap.parse_args()
    from loader import synthetic_label_set
    from pipeline.plan import teacher_cost
    from schemas.files import TOKENIZER_DIR, copy_tokenizer
    peak, peak_note = peak_flops(args.bf16)
    with tempfile.TemporaryDirectory() as tmp:
        labels = synthetic_label_set(os.path.join(tmp, "labels"), rows=args.rows, seq=SEQ,
                                     resp=RESP, k=args.k, vocab=args.vocab)
        # the student takes the labels' tokenizer; the demo's (80 tokens) fits under any V
        copy_tokenizer(os.path.join(ROOT, "demo", "teacher"), os.path.join(labels, TOKENIZER_DIR))
        cfg = student_config(args.student, args.vocab)
        student = os.path.join(tmp, "student.json")
        with open(student, "w") as f:
            json.dump(cfg, f)
        cost = teacher_cost(cfg)
        params = cost.total_params - cfg["hidden_size"] * args.vocab * cfg["tie_word_embeddings"]
        flops_per_row = 3 * cost.sequence(SEQ, RESP)
        for chunk in (int(c) for c in args.chunks.split(",")):
            measure(labels, student, tmp, args, chunk, params, flops_per_row, peak, peak_note)


def measure(labels, student, tmp, args, chunk, params, flops_per_row, peak, peak_note):
    """CE-only and KD runs at one ``chunk_positions``: a JSON line each, then their ratio."""
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{os.cpu_count()} CPU cores"
    tok_s = {}
    for name, lam in (("ce_only", 1.0), ("kd", 0.5)):
        steps = run(labels, student, os.path.join(tmp, f"{name}-{chunk}"), args, lam,
                    chunk)[SKIP:]
        seconds = sum(m["step_s"] for m in steps)
        n_rows = args.batch * len(steps)
        flop_s = n_rows * flops_per_row / seconds
        tok_s[name] = n_rows * SEQ / seconds
        print(json.dumps({"run": name, "lambda": lam, "chunk_positions": chunk,
                          "student": args.student, "params": round(params), "device": device,
                          "bf16": args.bf16, "k": args.k, "vocab": args.vocab,
                          "tok_s": tok_s[name], "labelled_tok_s": n_rows * RESP / seconds,
                          "model_tflop_s": flop_s / 1e12,
                          "mfu": flop_s / peak if peak else None, "peak": peak_note}),
              flush=True)
    print(json.dumps({"chunk_positions": chunk,
                      "kd_over_ce_only_time": tok_s["ce_only"] / tok_s["kd"]}), flush=True)


if __name__ == "__main__":
    main()
