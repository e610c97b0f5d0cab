"""PREDICT / EVALUATE on Ray Data: ``num_workers`` replicas of the model in an actor pool.

The statement's rows (paths, not audio) become one Ray Dataset; ``map_batches`` sends
batches of ``batch_size`` rows to the actors, each holding the model class's own
transcriber (so transcripts are those of local inference), which decode the audio where
they run.  Ray Data keeps the input order (``preserve_order``), and transcripts come back
as each batch finishes: the statement streams them to the client chunk by chunk.

The model's version folder and the audio files must be readable where the actors run (one
machine, or storage every node mounts: docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import functools
import math
import pickle
import queue
import threading
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from .errors import Cancelled, MLError, NoCapacity
from .ray_cluster import RayCluster, carried_error, dataset_of, import_ray, worker_resources


#: How long a statement waits for its replicas to start (placed, model loaded) before it fails
#: (RESOURCE_EXHAUSTED) rather than waiting for room forever; a cancel is seen after it.
REPLICA_START_WAIT_S = 120


def _shown(resources: dict) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items()) + " each"


class _Replica:
    """A Ray Data actor: one loaded transcriber, applied to batches of rows.

    Ray Data 2.60 hands an exception raised here back as its own UserCodeException, without
    the original (a missing file, a corrupt model: the user's message and status). So an ml
    error travels as data instead: pickled, in the ``raised`` column of the batch it ended.
    """

    def __init__(self, class_name: str, model_dir: str, options: dict, keep_going: bool):
        from .options import resolve_class

        self.transcriber, self.failure = None, None
        try:
            self.transcriber = resolve_class(class_name).implementation().load_transcriber(model_dir, options)
        except MLError as exc:
            self.failure = exc  # reported with the first batch
        self.options, self.keep_going = options, keep_going

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Arrow batches keep NULLs NULL (numpy batches turn a NULL string into NaN)
        paths, rows, errors = (batch.column(c).to_pylist() for c in ("path", "row", "error"))
        stats: dict = {}
        raised = None
        try:
            if self.failure is not None:
                raise self.failure
            texts = self.transcriber.transcribe(
                paths, self.options["batch_size"], row_offset=rows[0], stats=stats,
                max_seconds=self.options.get("max_duration"), errors=errors if self.keep_going else None,
                options=self.options)
        except MLError as exc:
            texts, raised = [None] * len(rows), pickle.dumps(exc)
        seconds = [0.0] * len(rows)
        seconds[0] = stats.get("audio_seconds", 0.0)
        return pa.table({"row": pa.array(rows, pa.int64()), "text": pa.array(texts, pa.string()),
                         "error": pa.array(errors, pa.string()), "audio_seconds": pa.array(seconds, pa.float64()),
                         "raised": pa.array([raised] * len(rows), pa.binary())})


class RayTranscriber:
    """A transcriber whose replicas run on the cluster (``transcribe_stream``)."""

    def __init__(self, cluster: RayCluster, class_name: str, model_dir: str, options: dict):
        self.cluster, self.class_name, self.model_dir, self.options = cluster, class_name, model_dir, options

    def transcribe(self, paths, batch_size: int, row_offset: int = 0, should_stop=None, stats=None,
                   max_seconds=None, errors=None, options=None) -> list:
        """One chunk, as a stream of one (what callers of a local transcriber expect)."""
        for texts, chunk_stats in self.transcribe_stream([(list(paths), errors, row_offset)], batch_size,
                                                         should_stop=should_stop, max_seconds=max_seconds,
                                                         options=options):
            if stats is not None:
                stats.update(chunk_stats)
            return texts
        return []

    def transcribe_stream(self, chunks: Iterable[tuple[list, list | None, int]], batch_size: int, *,
                          should_stop: Callable[[], bool] | None = None, max_seconds: float | None = None,
                          options: dict | None = None) -> Iterator[tuple[list, dict]]:
        options = dict(options or self.options)
        options.update(batch_size=batch_size, max_duration=max_seconds)
        chunks = list(chunks)  # the statement's rows: paths and per-row errors only
        if not chunks:
            return
        keep_going = chunks[0][1] is not None
        rows, paths, errors, ends = [], [], [], []
        for chunk_paths, chunk_errors, row_offset in chunks:
            for i, path in enumerate(chunk_paths):
                rows.append(row_offset + i)
                paths.append(path)
                errors.append(chunk_errors[i] if chunk_errors is not None else None)
            ends.append(len(rows))
        items = [{"row": r, "path": p, "error": e} for r, p, e in zip(rows, paths, errors)]
        pipeline = functools.partial(_transcribed, self.class_name, self.model_dir, options, keep_going, items)
        # Ray Data 2.60 cannot drive a pipeline from a Ray Client driver (it needs a core
        # worker), so a server joined through ray:// has one of the cluster's processes drive it
        results = _relayed(pipeline) if self.cluster.address.startswith("ray://") else pipeline()
        texts: list = []
        done_errors: list = []
        seconds = 0.0
        chunk = 0
        try:
            for out in results:
                texts += out.column("text").to_pylist()
                done_errors += out.column("error").to_pylist()
                seconds += sum(out.column("audio_seconds").to_pylist())
                while chunk < len(chunks) and len(texts) >= ends[chunk]:
                    start = ends[chunk - 1] if chunk else 0
                    if chunks[chunk][1] is not None:
                        chunks[chunk][1][:] = done_errors[start:ends[chunk]]
                    yield texts[start:ends[chunk]], {"audio_seconds": seconds}
                    seconds = 0.0
                    chunk += 1
                if should_stop is not None and should_stop():
                    raise Cancelled("transcription cancelled")
        except Exception as exc:  # noqa: BLE001 - Ray wraps the replicas' errors
            raise carried_error(exc, "inference") from None
        finally:
            results.close()


def _transcribed(class_name: str, model_dir: str, options: dict, keep_going: bool,
                 items: list[dict]) -> Iterator[pa.Table]:
    """Run the pipeline from this process: (row, text, error, audio_seconds) tables in input
    order, as the replicas finish them."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.wait_for_min_actors_s = REPLICA_START_WAIT_S
    resources, _ = worker_resources(options)
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    batch_size = options["batch_size"]
    # a block per batch: Ray Data hands blocks to whichever replica is free
    dataset = dataset_of(items, blocks=math.ceil(len(items) / batch_size))
    transcribed = dataset.map_batches(
        _Replica, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=options["num_workers"]),
        batch_format="pyarrow",
        fn_constructor_kwargs={"class_name": class_name, "model_dir": model_dir, "options": options,
                               "keep_going": keep_going},
        num_cpus=resources.get("CPU", 1.0), num_gpus=resources.get("GPU", 0.0), resources=custom or None)
    results = transcribed.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    try:
        for table in results:
            raised = table.column("raised").drop_null()
            if len(raised):
                raise pickle.loads(raised[0].as_py())  # the replica's own ml error (see _Replica)
            yield table
    except ray.exceptions.GetTimeoutError:
        raise NoCapacity(f"the Ray cluster could not start {options['num_workers']} model replica(s) of "
                         f"{_shown(resources)} within {REPLICA_START_WAIT_S} s: ask for fewer "
                         "(num_workers, resources_per_worker), or wait for running jobs to end") from None
    except Exception as exc:  # noqa: BLE001 - found here, where Ray's wrappers still hold their causes
        raise carried_error(exc, "inference") from None
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


class _Relay:
    """A Ray actor that drives a pipeline inside the cluster for a server joined through Ray
    Client, which has no streaming generators either: the server takes its tables by polling."""

    def __init__(self, pipeline: Callable[[], Iterator[pa.Table]]):
        self._tables: queue.Queue = queue.Queue(maxsize=4)  # the pipeline waits for a slow client
        threading.Thread(target=self._drive, args=(pipeline,), name="relay", daemon=True).start()

    def _drive(self, pipeline) -> None:
        try:
            for table in pipeline():
                self._tables.put(table)
            self._tables.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the server by take()
            self._tables.put(exc)

    def take(self, wait_s: float) -> list:
        """[] when nothing came within ``wait_s``, [table], or [None] once the pipeline ended;
        raises the pipeline's error."""
        try:
            table = self._tables.get(timeout=wait_s)
        except queue.Empty:
            return []
        if isinstance(table, BaseException):
            raise table
        return [table]


def _relayed(pipeline: Callable[[], Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """``pipeline()``'s tables, driven by a _Relay actor; closing this ends the actor, and with it
    the pipeline's replicas."""
    ray = import_ray()
    relay = ray.remote(num_cpus=0)(_Relay).remote(pipeline)
    try:
        while True:
            for table in ray.get(relay.take.remote(1.0)):
                if table is None:
                    return
                yield table
    finally:
        with contextlib.suppress(Exception):  # a lost connection: the cluster ends the actor itself
            ray.kill(relay)

