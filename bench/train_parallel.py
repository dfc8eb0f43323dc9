"""Trainer tokens/s with 1 process vs 2 (torch DDP; FSDP2 with --shard-model), and the share of
a step spent in communication.

    python bench/train_parallel.py --labels DIR [--steps 30] [--batch 16]

For each student (the demo student; "wide": hidden 512, 4 layers, the demo vocabulary) it runs
`kd train` with one process (global batch B) and under torchrun with two gloo processes (B/2
each: the same global batches, so the same rows and tokens per step). tokens/s = the one-process
run's labelled tokens (the same in every run) / the sum of step times after the first 3 steps.
Communication: under torchrun, the median time of the collectives one optimiser step needs
(DDP: an all-reduce of every gradient; FSDP2: all-gathers of the parameters for forward and
backward and a reduce-scatter of the gradients), on buffers of the student's parameter count,
over the median step time of that run. DDP overlaps its buckets with the backward pass, so the
exposed share is at most that. Prints JSON lines.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)
WIDE = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
        "head_dim": 64, "max_position_embeddings": 256, "vocab_size": 80,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
SKIP = 3  # warm-up steps left out of the timing


def comm(student: str, labels: str, reps: int = 10) -> None:
    """Run under torchrun: time one step's collectives on the student's parameter count."""
    import torch
    import torch.distributed as dist
    from student_train.model import load_student
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    model, _ = load_student(student, os.path.join(labels, "tokenizer"))
    n = sum(p.numel() for p in model.parameters())
    n -= n % world
    full, shard = torch.randn(n), torch.randn(n // world)

    def timed(fn):
        fn()
        out = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)
    allreduce = timed(lambda: dist.all_reduce(full))
    gather = timed(lambda: dist.all_gather_into_tensor(full, shard))
    scatter = timed(lambda: dist.reduce_scatter_tensor(shard, full))
    if dist.get_rank() == 0:
        print(json.dumps({"params": n, "ddp_comm_s": allreduce,
                          "fsdp2_comm_s": 2 * gather + scatter}), flush=True)
    dist.destroy_process_group()


def train(labels, student, out, steps, batch, procs, extra=()):
    cmd = [f"{BIN}/kd", "train", "--labels", labels, "--student", student, "--out", out,
           "--steps", str(steps), "--seed", "0", "--batch-size", str(batch // procs), *extra]
    if procs > 1:
        cmd = [f"{BIN}/torchrun", "--standalone", f"--nproc_per_node={procs}", "--no-python",
               *cmd]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ,
                                                              "OMP_NUM_THREADS": "1"})
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--comm", help=argparse.SUPPRESS)  # internal: the torchrun part
    args = ap.parse_args()
    if args.comm:
        return comm(args.comm, args.labels)
    with tempfile.TemporaryDirectory() as tmp:
        wide = os.path.join(tmp, "wide.json")
        with open(wide, "w") as f:
            json.dump(WIDE, f)
        for name, student in (("demo", os.path.join(ROOT, "demo", "student.json")),
                              ("wide", wide)):
            c = subprocess.run([f"{BIN}/torchrun", "--standalone", "--nproc_per_node=2",
                                "--no-python", sys.executable, __file__, "--labels",
                                args.labels, "--comm", student], check=True,
                               capture_output=True, text=True)
            collectives = json.loads(c.stdout.strip().splitlines()[-1])
            one = train(args.labels, student, os.path.join(tmp, f"{name}-1"), args.steps,
                        args.batch, 1)
            tokens = sum(m["tokens"] for m in one[SKIP:])
            for label, procs, extra, key in (("1 process", 1, (), None),
                                             ("2 processes, DDP", 2, (), "ddp_comm_s"),
                                             ("2 processes, FSDP2", 2, ("--shard-model",),
                                              "fsdp2_comm_s")):
                run = one if procs == 1 else train(args.labels, student,
                                                   os.path.join(tmp, f"{name}-{label}"),
                                                   args.steps, args.batch, procs, extra)
                step = statistics.median(m["step_s"] for m in run[SKIP:])
                row = {"student": name, "params": collectives["params"], "run": label,
                       "tok_s": tokens / sum(m["step_s"] for m in run[SKIP:]),
                       "step_s_median": step}
                if key:
                    row.update(comm_s=collectives[key], comm_share=collectives[key] / step)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
