"""ml.options: defaults, aliases, and errors that name the option and list the valid ones."""

from __future__ import annotations

import re

import pytest

from ml.errors import BadOptions, UnknownModelClass
from ml.options import MODEL_CLASSES, model_classes_table, validate


def test_defaults_and_the_tutorials_options(monkeypatch):
    monkeypatch.delenv("THANOSQL_BASE_MODEL", raising=False)
    opts = validate("Wav2Vec2En", "build", {"audio_col": "audio", "text_col": "text", "epochs": 1, "batch_size": 8})
    assert opts["epochs"] == 1 and opts["batch_size"] == 8
    assert opts["learning_rate"] == 1e-4 and opts["overwrite"] is False and opts["seed"] == 42
    assert opts["base_model"] == "facebook/wav2vec2-base-960h"
    assert opts["mixed_precision"] == "auto" and opts["max_steps"] is None
    assert validate("Wav2Vec2En", "build", {})["epochs"] == 5
    assert validate("Wav2Vec2En", "build", {})["batch_size"] == 16
    monkeypatch.setenv("THANOSQL_BASE_MODEL", "/models/base")
    assert validate("Wav2Vec2En", "build", {})["base_model"] == "/models/base"
    predict = validate("wav2vec2en", "PREDICT", None)
    assert predict == {"audio_col": "audio", "batch_size": 8, "result_col": "predict_result",
                       "max_duration": 4 * 3600.0, "on_error": "fail", "error_col": "predict_error",
                       "num_workers": None, "use_gpu": False, "resources_per_worker": None}
    assert set(validate("Wav2Vec2En", "evaluate", {})) == {"audio_col", "text_col", "batch_size", "max_duration",
                                                          "normalizer", "details", "num_workers", "use_gpu",
                                                              "resources_per_worker"}
    assert "base_model" not in validate("Wav2Vec2En", "fit", {})


def test_aliases_and_type_coercions():
    assert validate("Wav2Vec2En", "build", {"max_epochs": 3})["epochs"] == 3
    assert validate("Wav2Vec2En", "build", {"MAX_EPOCHS": 3})["epochs"] == 3
    lr = validate("Wav2Vec2En", "build", {"learning_rate": 1})["learning_rate"]
    assert lr == 1.0 and isinstance(lr, float)
    assert validate("Wav2Vec2En", "build", {"fp16": True})["mixed_precision"] == "fp16"
    assert validate("Wav2Vec2En", "build", {"mixed_precision": False})["mixed_precision"] == "no"
    assert validate("Wav2Vec2En", "build", {"mixed_precision": "BF16"})["mixed_precision"] == "bf16"
    again = validate("Wav2Vec2En", "build", validate("Wav2Vec2En", "build", {"epochs": 2}))
    assert again["epochs"] == 2  # validated options validate again unchanged


@pytest.mark.parametrize("statement, options, words", [
    ("build", {"epoch": 1}, ["'epoch'", "valid options:", "epochs", "max_epochs", "learning_rate"]),
    ("predict", {"text_col": "t"}, ["'text_col'", "PREDICT", "result_col"]),
    ("build", {"batch_size": "8"}, ["'batch_size'", "integer", "str"]),
    ("build", {"batch_size": 8.0}, ["'batch_size'", "integer", "float"]),
    ("build", {"batch_size": True}, ["'batch_size'", "integer", "bool"]),
    ("build", {"overwrite": 1}, ["'overwrite'", "True or False"]),
    ("build", {"overwrite": "True"}, ["'overwrite'", "True or False"]),
    ("build", {"learning_rate": "1e-4"}, ["'learning_rate'", "number"]),
    ("build", {"learning_rate": 0}, ["'learning_rate'", "> 0"]),
    ("build", {"epochs": 0}, ["'epochs'", ">= 1"]),
    ("build", {"warmup_ratio": 1.5}, ["'warmup_ratio'", "<= 1"]),
    ("build", {"epochs": 1, "max_epochs": 2}, ["'epochs'", "twice"]),
    ("build", {"audio_col": ""}, ["'audio_col'", "empty"]),
    ("build", {"mixed_precision": "fp8"}, ["'mixed_precision'", "'bf16'"]),
    ("build", {"batch_size": None}, ["'batch_size'", "NULL"]),
    # Non-finite, absurd or overflowing values (issue 8): refused here, not in torch later.
    ("build", {"learning_rate": float("inf")}, ["'learning_rate'", "finite"]),
    ("build", {"learning_rate": float("nan")}, ["'learning_rate'", "finite"]),
    ("build", {"learning_rate": 10 ** 400}, ["'learning_rate'", "finite"]),
    ("build", {"learning_rate": 1.5}, ["'learning_rate'", "<= 1.0"]),
    ("build", {"warmup_ratio": float("-inf")}, ["'warmup_ratio'", "finite"]),
    ("build", {"weight_decay": 1e308}, ["'weight_decay'", "<= 1.0"]),
    ("build", {"max_grad_norm": 1e-320}, ["'max_grad_norm'", "float32"]),
    ("build", {"seed": 2 ** 32}, ["'seed'", "<= 4294967295"]),
    ("build", {"seed": 99999999999999999999999}, ["'seed'", "<= 4294967295"]),
    ("build", {"epochs": 2 ** 63}, ["'epochs'", "<= 9223372036854775807"]),
    ("build", {"max_steps": 2 ** 63}, ["'max_steps'", "<= 9223372036854775807"]),
    ("predict", {"batch_size": 2 ** 63}, ["'batch_size'", "<= 9223372036854775807"]),
    ("predict", {"max_duration": float("inf")}, ["'max_duration'", "finite"]),
    ("predict", {"result_col": 7 * 10 ** 200}, ["'result_col'", "..."]),  # a long value is cut short
])
def test_bad_options_are_named(statement, options, words):
    with pytest.raises(BadOptions) as err:
        validate("Wav2Vec2En", statement, options)
    for word in words:
        assert word in str(err.value)


def test_bounds_that_are_accepted():
    opts = validate("Wav2Vec2En", "build", {"seed": 2 ** 32 - 1, "learning_rate": 1, "weight_decay": 1,
                                            "batch_size": 2 ** 63 - 1, "max_grad_norm": 1e-30, "max_duration": None})
    assert (opts["seed"], opts["learning_rate"], opts["batch_size"], opts["max_duration"]) == \
        (2 ** 32 - 1, 1.0, 2 ** 63 - 1, None)
    assert validate("Wav2Vec2En", "build", {"seed": 0, "weight_decay": 0, "warmup_ratio": 0})["seed"] == 0


def test_unknown_class_and_statement():
    with pytest.raises(UnknownModelClass, match="Wav2Vec2En"):
        validate("Wav2Vec2Ko", "build", {})
    with pytest.raises(BadOptions, match="BUILD, FIT, PREDICT, EVALUATE"):
        validate("Wav2Vec2En", "explain", {})


def test_model_classes_for_list_thanosql_model():
    cls = MODEL_CLASSES["Wav2Vec2En"]
    assert cls.task == "speech-recognition" and cls.statements == ("build", "fit", "predict", "evaluate")
    table = model_classes_table()
    assert table.column("name").to_pylist() == ["Wav2Vec2En", "Whisper"]
    assert table.column("statements").to_pylist() == ["BUILD, FIT, PREDICT, EVALUATE"] * 2  # Whisper fine-tunes too
    assert "whisper_tiny_en" in table.column("pretrained").to_pylist()[1]


def test_scale_out_options_are_checked_and_refused_without_ray():
    from ml.runner import Runner

    opts = validate("Wav2Vec2En", "build", {"num_workers": 2, "resources_per_worker": {"CPU": 2, "GPU": 1}})
    assert opts["num_workers"] == 2 and opts["resources_per_worker"] == {"CPU": 2.0, "GPU": 1.0}
    assert opts["max_failures"] == 0 and opts["checkpoint_steps"] == 500 and opts["use_gpu"] is False
    for bad, says in [({"resources_per_worker": {"CPU": -1}}, "from 0 to"), ({"resources_per_worker": 2}, "{'name'"),
                      ({"resources_per_worker": {"CPU": 2.5}}, "whole"), ({"num_workers": 0}, ">= 1"),
                      ({"max_failures": -1}, ">= 0")]:
        with pytest.raises(BadOptions, match=re.escape(says)):
            validate("Wav2Vec2En", "build", bad)
    local = Runner()
    local.check("build", validate("Wav2Vec2En", "build", {"num_workers": 1}))  # one worker: this machine
    local.check("predict", validate("Whisper", "predict", {}))
    for statement, given in [("build", {"num_workers": 2}), ("fit", {"max_failures": 1}),
                             ("predict", {"num_workers": 1}), ("evaluate", {"num_workers": 2, "use_gpu": True}),
                             ("build", {"resources_per_worker": {"CPU": 1}})]:
        with pytest.raises(BadOptions, match="needs? a server started with --ray ADDRESS"):
            local.check(statement, validate("Wav2Vec2En", statement, given))
    for runner in (local, Runner(cluster=object())):  # replica options without replicas, with Ray or not
        with pytest.raises(BadOptions, match="apply to the Ray replicas"):
            runner.check("evaluate", validate("Wav2Vec2En", "evaluate", {"use_gpu": True}))
    assert validate("Wav2Vec2En", "build", {"resources_per_worker": {"memory": 4e9}})["resources_per_worker"] == \
        {"memory": 4e9}  # Ray counts memory in bytes
