"""`thanosql-server`: start the Flight SQL server on a data directory."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

DEFAULT_DATA_DIR = "./thanosql-data"


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="thanosql-server", description=__doc__)
    p.add_argument("--host", default=env("THANOSQL_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("THANOSQL_PORT", "31337")),
                   help="0 picks a free port (printed on start)")
    p.add_argument("--data-dir", default=env("THANOSQL_DATA_DIR", DEFAULT_DATA_DIR),
                   help="catalog, tables and models live here (default %(default)s)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="another folder SQL may read (COPY, external tables, audio); repeatable")
    p.add_argument("--dataset-mirror", default=env("THANOSQL_DATASET_MIRROR"),
                   help="local folder holding the datasets of GET THANOSQL DATASET")
    p.add_argument("--token", action="append", default=[],
                   help="accept 'Authorization: Bearer TOKEN' (also env THANOSQL_API_TOKEN); "
                        "wrong tokens are not rate-limited, so use a long random string (at "
                        "least 24 characters, e.g. python -c \"import secrets; "
                        "print(secrets.token_urlsafe(32))\"); shorter ones get a warning at "
                        "start; repeatable")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="accept this user/password (Flight handshake, as JDBC does); repeatable")
    p.add_argument("--max-statement-bytes", type=int, metavar="BYTES",
                   default=int(env("THANOSQL_MAX_STATEMENT_BYTES", str(1 << 20))),
                   help="refuse SQL text longer than this, before planning (INVALID_ARGUMENT); "
                        "default %(default)s")
    p.add_argument("--login-attempts", type=int, metavar="N", default=5,
                   help="wrong passwords allowed per user name before logins back off "
                        "(default %(default)s)")
    p.add_argument("--login-backoff", type=float, metavar="SECONDS", default=1.0,
                   help="first login refusal window after --login-attempts failures; doubles "
                        "with each further failure, up to 300 s (default %(default)s)")
    p.add_argument("--tls-cert", help="PEM certificate: serve grpc+tls")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--statement-timeout", type=float, metavar="SECONDS",
                   default=float(env("THANOSQL_STATEMENT_TIMEOUT", "0")),
                   help="stop any statement (query, write, BUILD, PREDICT...) that runs longer "
                        "(DEADLINE_EXCEEDED); 0, the default, means no limit")
    p.add_argument("--cache-memory", metavar="SIZE", default=env("THANOSQL_CACHE_MEMORY", "25%"),
                   help="memory for serving hot tables as Arrow (e.g. 4GiB, 512MB, 25%% of RAM; "
                        "0 reads every query from Parquet); default %(default)s")
    from planner.jobs import DEFAULT_MAX_TRAININGS  # stdlib only: the parser stays light

    p.add_argument("--max-trainings", type=int, metavar="N",
                   default=int(env("THANOSQL_MAX_TRAININGS", str(DEFAULT_MAX_TRAININGS))),
                   help="BUILD / FIT trainings at once, waited for or in the background (wait=False); one more "
                        "is refused with RESOURCE_EXHAUSTED; default %(default)s")
    p.add_argument("--ray", metavar="ADDRESS", default=env("THANOSQL_RAY_ADDRESS"),
                   help="scale out on Ray (pip install -e '.[ray]'): 'local' starts a Ray instance owned by "
                        "the server; 'auto', HOST:PORT or ray://HOST:PORT join a running cluster. BUILD/FIT then "
                        "train as Ray Train jobs (OPTIONS num_workers, use_gpu, resources_per_worker, "
                        "max_failures), PREDICT/EVALUATE with num_workers run on Ray Data (docs/scale-out.md)")
    p.add_argument("--ray-storage", metavar="PATH_OR_URI", default=env("THANOSQL_RAY_STORAGE"),
                   help="where Ray Train keeps checkpoints: a folder every node mounts, or s3://..., gs://... "
                        "(default: DATA_DIR/ray_results, enough for one machine)")
    p.add_argument("--log-level", default=env("THANOSQL_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pyarrow appends a Python traceback to error messages sent to clients unless this
    # is 0; our own logs format tracebacks with an explicit limit (flight_server.errors).
    sys.tracebacklimit = 0
    # Two busy torch processes (PREDICT here, training in the worker) on few cores slow
    # down several-fold with OpenMP's spinning waits; measured 4-6x here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from flight_server.auth import MIN_TOKEN_CHARS, Authenticator, LoginBackoff
    from flight_server.server import FlightSqlServer
    from planner.engine import Engine

    named = [(f"--token #{i}", t) for i, t in enumerate(args.token, 1)]
    if os.environ.get("THANOSQL_API_TOKEN"):
        named.append(("THANOSQL_API_TOKEN", os.environ["THANOSQL_API_TOKEN"]))
    tokens = [t for _, t in named]
    for source, token in named:
        if len(token) < MIN_TOKEN_CHARS:  # never log the token itself
            logging.getLogger("thanosql.server").warning(
                "weak bearer token: %s is %d characters long; wrong tokens are not rate-limited, so "
                "use a long random string of at least %d characters (e.g. python -c \"import secrets; "
                "print(secrets.token_urlsafe(32))\")", source, len(token), MIN_TOKEN_CHARS)
    users = {}
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep:
            print("--user takes NAME:PASSWORD", file=sys.stderr)
            return 2
        users[name] = password
    tls = None
    scheme = "grpc"
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("--tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        tls = [(Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())]
        scheme = "grpc+tls"

    from planner.table_cache import parse_memory
    try:
        cache_memory = parse_memory(args.cache_memory)
    except ValueError as exc:
        print(f"--cache-memory: {exc}", file=sys.stderr)
        return 2
    runner = None
    if args.ray:
        from ml.errors import MLError
        from ml.ray_cluster import connect
        from ml.runner import Runner
        try:
            runner = Runner(connect(args.ray, args.data_dir, storage=args.ray_storage))
        except MLError as exc:
            print(f"--ray {args.ray}: {exc}", file=sys.stderr)
            return 2
    engine = Engine(args.data_dir, allowed_roots=args.allow_path, dataset_mirror=args.dataset_mirror,
                    statement_timeout=args.statement_timeout, cache_memory=cache_memory, runner=runner,
                    max_trainings=max(1, args.max_trainings))
    for problem in engine.load_problems:
        logging.getLogger("thanosql.server").warning("could not restore %s", problem)
    server = FlightSqlServer(engine, f"{scheme}://{args.host}:{args.port}",
                             authenticator=Authenticator(tokens, users, backoff=LoginBackoff(
                                 free_failures=args.login_attempts, base_delay=args.login_backoff)),
                             tls_certificates=tls, max_statement_bytes=args.max_statement_bytes)
    print(f"thanosql-server listening on {scheme}://{args.host}:{server.port} "
          f"(data directory {engine.data_dir}; ML runs on {engine.runner.describe()})", flush=True)
    def stop(signum, frame):  # SIGTERM shuts down as Ctrl-C does: trainings and a local Ray stop too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
