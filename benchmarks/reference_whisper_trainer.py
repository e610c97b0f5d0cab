"""The reference for BUILD / FIT MODEL USING Whisper: fine-tuning Whisper with transformers'
``Seq2SeqTrainer``, written the way a user would without this project (after Hugging Face's
"Fine-Tune Whisper For Multilingual ASR with Transformers" recipe): log-mel features and
labels prepared up front, a padding collator that masks label padding with -100 and drops
the leading <|startoftranscript|>, AdamW with linear warm-up.

    python -m benchmarks.reference_whisper_trainer --model HF_DIR --csv FILE --out DIR \
        [--epochs 1] [--batch-size 8] [--learning-rate 1e-5] [--result FILE.json]

``--model`` is a transformers Whisper checkpoint folder (the benchmark converts the packaged
tiny.en once for it). It knows nothing of the server or of ml/; only torch, transformers and
soundfile.
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
    Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperFeatureExtractor, WhisperForConditionalGeneration,
    WhisperTokenizer,
)


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """Stacks the (fixed-size) features, pads the labels with -100, drops a leading decoder start."""
    feature_extractor: WhisperFeatureExtractor
    tokenizer: WhisperTokenizer
    decoder_start_token_id: int

    def __call__(self, features):
        batch = self.feature_extractor.pad([{"input_features": f["input_features"]} for f in features],
                                           return_tensors="pt")
        labels_batch = self.tokenizer.pad([{"input_ids": f["labels"]} for f in features], return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
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
    p.add_argument("--model", required=True, help="transformers Whisper checkpoint folder")
    p.add_argument("--csv", required=True, help="audio,text CSV (audio relative to the CSV)")
    p.add_argument("--out", required=True, help="where the fine-tuned model is saved")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit", type=int, default=None, help="first N rows only")
    p.add_argument("--result", default=None, help="write timings here as JSON")
    args = p.parse_args(argv)

    feature_extractor = WhisperFeatureExtractor.from_pretrained(args.model)
    tokenizer = WhisperTokenizer.from_pretrained(args.model)
    model = WhisperForConditionalGeneration.from_pretrained(args.model)
    model.config.use_cache = False

    t_data = time.perf_counter()
    items = []
    for path, text in load_rows(args.csv, args.limit):
        audio, rate = sf.read(path, dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        assert rate == 16_000, f"{path}: {rate} Hz (this recipe expects 16 kHz)"
        features = feature_extractor(audio, sampling_rate=rate).input_features[0]
        items.append({"input_features": np.asarray(features, dtype=np.float32),
                      "labels": tokenizer(" " + text).input_ids})
    data_seconds = time.perf_counter() - t_data

    training_args = Seq2SeqTrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        predict_with_generate=False,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(feature_extractor, tokenizer,
                                                           model.config.decoder_start_token_id),
        train_dataset=SpeechDataset(items),
        processing_class=feature_extractor,
    )
    t_train = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - t_train
    trainer.save_model(args.out)
    tokenizer.save_pretrained(args.out)
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
