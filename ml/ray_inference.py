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

import math
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
    """A Ray Data actor: one loaded transcriber, applied to batches of rows."""

    def __init__(self, class_name: str, model_dir: str, options: dict, keep_going: bool):
        from .options import resolve_class

        self.transcriber = resolve_class(class_name).implementation().load_transcriber(model_dir, options)
        self.options, self.keep_going = options, keep_going

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Arrow batches keep NULLs NULL (numpy batches turn a NULL string into NaN)
        paths, rows, errors = (batch.column(c).to_pylist() for c in ("path", "row", "error"))
        stats: dict = {}
        texts = self.transcriber.transcribe(
            paths, self.options["batch_size"], row_offset=rows[0], stats=stats,
            max_seconds=self.options.get("max_duration"), errors=errors if self.keep_going else None,
            options=self.options)
        seconds = [0.0] * len(rows)
        seconds[0] = stats.get("audio_seconds", 0.0)
        return pa.table({"row": pa.array(rows, pa.int64()), "text": pa.array(texts, pa.string()),
                         "error": pa.array(errors, pa.string()), "audio_seconds": pa.array(seconds, pa.float64())})


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
        ray = import_ray()
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
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.wait_for_min_actors_s = REPLICA_START_WAIT_S
        resources, _ = worker_resources(options)
        wanted = _shown(resources)
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        # a block per batch: Ray Data hands blocks to whichever replica is free
        dataset = dataset_of([{"row": r, "path": p, "error": e} for r, p, e in zip(rows, paths, errors)],
                             blocks=math.ceil(len(rows) / batch_size))
        transcribed = dataset.map_batches(
            _Replica, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=options["num_workers"]),
            batch_format="pyarrow",
            fn_constructor_kwargs={"class_name": self.class_name, "model_dir": self.model_dir,
                                   "options": options, "keep_going": keep_going},
            num_cpus=resources.get("CPU", 1.0), num_gpus=resources.get("GPU", 0.0),
            resources=custom or None)
        texts: list = []
        done_errors: list = []
        seconds = 0.0
        chunk = 0
        results = transcribed.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
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
        except MLError:
            raise
        except ray.exceptions.GetTimeoutError:
            raise NoCapacity(f"the Ray cluster could not start {options['num_workers']} model replica(s) of "
                             f"{wanted} within {REPLICA_START_WAIT_S} s: ask for fewer "
                             "(num_workers, resources_per_worker), or wait for running jobs to end") from None
        except Exception as exc:  # noqa: BLE001 - Ray wraps the replicas' errors
            raise carried_error(exc, "inference") from None
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

