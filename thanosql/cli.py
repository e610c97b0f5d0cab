"""The `thanosql` command: `thanosql demo` runs the speech tutorial end to end."""

from __future__ import annotations

import argparse
import sys

from thanosql.local_server import default_data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thanosql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the ThanoSQL speech-recognition tutorial on a local server",
        description="Start a server, GET THANOSQL DATASET librispeech_data, then run the tutorial's "
                    "SELECT, BUILD MODEL, PREDICT and EVALUATE and print results and timings.")
    demo.add_argument("--data-dir", default=str(default_data_dir()),
                      help="the server's data directory (default: env THANOSQL_DATA_DIR or ./thanosql-data)")
    demo.add_argument("--small-checkpoint", action="store_true",
                      help="if no pretrained checkpoint is available (offline, not cached), train from a "
                           "small RANDOM local checkpoint instead of stopping (transcripts will be garbage)")
    demo.add_argument("--base-model", default=None,
                      help="checkpoint folder or hub id to fine-tune (default: env THANOSQL_BASE_MODEL or "
                           "facebook/wav2vec2-base-960h)")
    demo.add_argument("--dataset-mirror", default=None,
                      help="local folder holding librispeech_data (default: env THANOSQL_DATASET_MIRROR; "
                           "otherwise the sample is downloaded from openslr.org/12)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from thanosql.demo import Demo
        return Demo(args.data_dir, small_checkpoint=args.small_checkpoint, base_model=args.base_model,
                    dataset_mirror=args.dataset_mirror).run()
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
