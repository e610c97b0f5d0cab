"""Shared fixtures: real server processes on loopback, the shared LibriSpeech sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_process import SHARED_DATA, ServerProcess


@pytest.fixture(scope="session")
def librispeech() -> Path:
    if not (SHARED_DATA / "librispeech_train.csv").exists():
        pytest.fail(f"LibriSpeech sample not found at {SHARED_DATA}; set THANOSQL_TEST_DATA")
    return SHARED_DATA


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(*cli_args, data_dir=None) -> a running ServerProcess."""
    servers = []

    def start(*args, data_dir=None, env=None):
        server = ServerProcess(data_dir or tmp_path / "data", "--allow-path", str(SHARED_DATA), *args,
                               env=env)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    return start_server()
