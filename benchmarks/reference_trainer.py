"""The reference for BUILD MODEL: fine-tuning wav2vec2 CTC with transformers' Trainer,
written the way a user would without this project (after Hugging Face's "Fine-tune
Wav2Vec2 for English ASR" recipe): decode the audio up front, a CTC padding collator,
a frozen feature encoder, length-grouped batches, AdamW with linear warm-up.

    python -m benchmarks.reference_trainer --model DIR --csv FILE --out DIR \
        [--epochs 1] [--batch-size 8] [--learning-rate 1e-4] [--result FILE.json]

It knows nothing of the server or of ml/; only torch, transformers and soundfile.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass

START = time.perf_counter()

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    Trainer, TrainingArguments, Wav2Vec2ForCTC, Wav2Vec2Processor,
)


@dataclass
class DataCollatorCTCWithPadding:
    """Pads inputs and labels of a batch separately; label padding becomes -100 (ignored by CTC)."""
    processor: Wav2Vec2Processor
    padding: bool | str = True

    def __call__(self, features):
        inputs = [{"input_values": f["input_values"]} for f in features]
        labels = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.feature_extractor.pad(inputs, padding=self.padding, return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad(labels, padding=self.padding, return_tensors="pt")
        batch["labels"] = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        return batch


class SpeechDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def load_rows(csv_path: str, limit: int | None = None):
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [(os.path.join(base, r["audio"]), r["text"]) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="base checkpoint folder")
    p.add_argument("--csv", required=True, help="audio,text CSV (audio relative to the CSV)")
    p.add_argument("--out", required=True, help="where the fine-tuned model is saved")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit", type=int, default=None, help="first N rows only")
    p.add_argument("--result", default=None, help="write timings here as JSON")
    args = p.parse_args(argv)

    processor = Wav2Vec2Processor.from_pretrained(args.model)
    model = Wav2Vec2ForCTC.from_pretrained(args.model, ctc_loss_reduction="mean", ctc_zero_infinity=True,
                                           pad_token_id=processor.tokenizer.pad_token_id)
    model.freeze_feature_encoder()

    t_data = time.perf_counter()
    items = []
    for path, text in load_rows(args.csv, args.limit):
        audio, rate = sf.read(path, dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        assert rate == 16_000, f"{path}: {rate} Hz (this recipe expects 16 kHz)"
        values = processor(audio, sampling_rate=rate).input_values[0]
        labels = processor.tokenizer(text.upper()).input_ids
        items.append({"input_values": np.asarray(values, dtype=np.float32), "labels": labels})
    data_seconds = time.perf_counter() - t_data

    training_args = TrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        train_sampling_strategy="group_by_length",
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorCTCWithPadding(processor),
        train_dataset=SpeechDataset(items),
        processing_class=processor.feature_extractor,
    )
    t_train = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - t_train
    trainer.save_model(args.out)
    processor.save_pretrained(args.out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "total_seconds": time.perf_counter() - START,  # imports included, as the server's worker has them
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "train_runtime": output.metrics.get("train_runtime"),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": output.training_loss,
        "utterances": len(items),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    if args.result:
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
