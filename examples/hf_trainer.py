"""Train a student with ``transformers.Trainer`` from a kd-pipeline label set.

    python examples/hf_trainer.py --labels runs/demo/labels/train --student demo/student.json \
        --out runs/demo/student_hf --steps 300

The only kd-specific parts: the label set as a torch IterableDataset, its collator, and a
``compute_loss`` that mixes CE with the KD term against the teacher's top k or, for a sampled
label set, the sampled estimate of the forward KL (student_train.library). The result is a plain
transformers model directory (with the label set's tokenizer), so
``kd eval --student hf=runs/demo/student_hf`` compares it with the others.
Needs ``accelerate`` (Trainer's dependency) besides the project's own.
"""
import argparse
import functools

from transformers import Trainer, TrainingArguments

from schemas.files import copy_tokenizer
from student_train.library import LabelSetDataset, collate_rows, kd_loss
from student_train.model import load_student


class KDTrainer(Trainer):
    """Trainer whose loss is lambda*CE + (1-lambda)*T^2*KD over the labelled positions."""

    def __init__(self, *args, lam: float = 0.5, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam, self.temperature = lam, temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = kd_loss(out.logits, inputs, lam=self.lam, temperature=self.temperature)
        return (loss, out) if return_outputs else loss


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help="label-set directory")
    ap.add_argument("--student", required=True, help="config JSON (fresh student) or model dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    train = LabelSetDataset(args.labels, seed=args.seed)
    model, tok = load_student(args.student, train.tokenizer_dir(), args.seed)
    trainer = KDTrainer(
        model=model, train_dataset=train, lam=args.lam, temperature=args.temperature,
        data_collator=functools.partial(collate_rows, pad_id=tok.pad_token_id or 0),
        args=TrainingArguments(
            output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, warmup_steps=min(20, args.steps // 10), seed=args.seed,
            lr_scheduler_type="cosine", weight_decay=0.0, logging_steps=max(1, args.steps // 10),
            save_strategy="no", report_to=[], remove_unused_columns=False,
            dataloader_num_workers=0, disable_tqdm=True))
    result = trainer.train()
    trainer.save_model(args.out)
    copy_tokenizer(train.tokenizer_dir(), args.out)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(f"trained {result.global_step} steps; loss {losses[0]:.4f} -> {losses[-1]:.4f} "
          f"-> {args.out}")
    return {"steps": result.global_step, "losses": losses}


if __name__ == "__main__":
    main()
