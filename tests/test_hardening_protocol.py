"""Protocol-layer hardening, against real server processes and the real clients.

- Every error class reaches ADBC and pyarrow.flight clients once, as one clean message,
  with its status (flight_server/errors.py has the table and why three are approximated).
- The same when the server is used as a library (no cli.py).
- Login backoff, the bounded token store, handles bound to their creator, the statement
  size limit.
- Seeded fuzzing of every Flight RPC: each call ends in a result or a Flight error, within
  its deadline, and the server keeps serving.
"""

from __future__ import annotations

import base64
import os
import random
import re
import subprocess
import sys
import textwrap
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2, descriptor

from flight_server import protocol as P
from flight_server.auth import LoginBackoff, TokenStore
from flight_server.errors import (MAX_MESSAGE_CHARS, REASONS, UNAVAILABLE, RpcStatus, capped, classify,
                                  flight_error)
from planner import errors as pe
from planner.engine import like
from server_process import REPO, SHARED_DATA, ServerProcess

BANNED = ("Traceback", 'File "', "Python exception", "pyarrow.lib", "pyarrow._flight")
TIMEOUT = flight.FlightCallOptions(timeout=10)


def assert_clean(message: str, core: str | None = None) -> None:
    for word in BANNED:
        assert word not in message, message
    if core is not None:
        assert message.count(core) == 1, message  # present, and not twice


def primary(message: str) -> str:
    """pyarrow's client appends gRPC's raw status to errors of streaming RPCs (DoGet,
    DoPut): "<message>. gRPC client debug context: <raw>". The raw gRPC message is
    Arrow's, which for INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED names the Python
    exception (see flight_server/errors.py); no traceback may appear even there."""
    assert "Traceback" not in message and 'File "' not in message, message
    return message.split(". gRPC client debug context: ", 1)[0]


def adbc_error(url: str, sql: str, fetch: bool = True, **kwargs) -> str:
    with flightsql.connect(url, autocommit=True, **kwargs) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as info:
            cur.execute(sql)
            if fetch:
                cur.fetch_arrow_table()
    return str(info.value)


def run(url: str, sql: str):
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def statement(sql: str) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(P.pack(P.CommandStatementQuery(query=sql)))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One CLI server for the module, with the default options."""
    base = tmp_path_factory.mktemp("protocol")
    server = ServerProcess(base / "data", "--allow-path", str(SHARED_DATA)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def timeout_srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("timeout")
    server = ServerProcess(base / "data", "--statement-timeout", "1.5").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    server = ServerProcess(base / "data", "--user", "alice:a-secret", "--user", "bob:b-secret",
                           "--user", "carol:c-secret", "--login-attempts", "3",
                           "--login-backoff", "2").start()
    yield server
    server.stop()


# --- errors over ADBC and pyarrow.flight (CLI server, real statements) -------------------

# (sql, gRPC code name ADBC prints, the error's own words, pyarrow exception, meant status)
REAL_ERRORS = [
    ("SELEC 1", "InvalidArgument", "SELEC", pa.ArrowInvalid, "InvalidArgument"),
    ("SELECT * FROM no_such_table", "NotFound", "no_such_table", pa.ArrowKeyError, "NotFound"),
    ("CREATE TABLE dup AS SELECT 1 AS a", "InvalidArgument", "already exists", pa.ArrowInvalid,
     "AlreadyExists"),
    ("COPY t FROM '/etc/passwd'", "PermissionDenied", "/etc/passwd", flight.FlightUnauthorizedError,
     "PermissionDenied"),
    ("SET datafusion.execution.batch_size = 1", "Unimplemented", "SET", pa.ArrowNotImplementedError,
     "Unimplemented"),
    ("SELECT " + "+".join(["1"] * 3000), "InvalidArgument", "the limit is", pa.ArrowInvalid,
     "InvalidArgument"),
    ("SELECT count(*), sum(value % 7) FROM generate_series(1, 100000000000)", "DeadlineExceeded",
     "statement timeout", flight.FlightTimedOutError, "DeadlineExceeded"),
]


@pytest.mark.parametrize("sql, code, words, pa_error, meant", REAL_ERRORS,
                         ids=[r[4] for r in REAL_ERRORS])
def test_error_classes_over_adbc_and_pyarrow(srv, timeout_srv, sql, code, words, pa_error, meant):
    if meant == "DeadlineExceeded":
        srv = timeout_srv
    if meant == "AlreadyExists":
        run(srv.url, "CREATE TABLE IF NOT EXISTS dup AS SELECT 1 AS a")
    message = adbc_error(srv.url, sql)
    assert f"({code};" in message, message
    assert words in message, message
    assert_clean(message)
    core = message.split("[FlightSQL] ", 1)[1].rsplit(f" ({code};", 1)[0]
    assert message.count(core) == 1 and core.count(words) == message.count(words), message

    client = flight.connect(srv.url)
    with pytest.raises(pa_error) as info:
        if meant in ("AlreadyExists", "DeadlineExceeded"):  # DDL and the long query run at DoGet
            ticket = client.get_flight_info(statement(sql), TIMEOUT).endpoints[0].ticket
            client.do_get(ticket, TIMEOUT).read_all()
        else:
            client.get_flight_info(statement(sql), TIMEOUT)
    text = primary(str(info.value))
    assert_clean(text)
    assert words in text and text.endswith(f". Detail: {meant}"), text


def test_oversize_statement_is_refused_before_planning(srv):
    limit = 1 << 20
    filler = "SELECT 1 -- "
    at_limit = filler + "x" * (limit - len(filler))
    assert run(srv.url, at_limit) == [(1,)]
    message = adbc_error(srv.url, at_limit + "x")
    assert "(InvalidArgument;" in message and "--max-statement-bytes" in message, message
    assert f"is {limit + 1} bytes; the limit is {limit} bytes" in message
    assert_clean(message)
    client = flight.connect(srv.url)
    big = "SELECT 1 -- " + "é" * limit  # counted in bytes, not characters
    for call in (lambda: client.get_flight_info(statement(big), TIMEOUT),
                 lambda: client.get_schema(statement(big), TIMEOUT),
                 lambda: list(client.do_action(flight.Action(P.CREATE_PREPARED_STATEMENT, P.pack(
                     P.ActionCreatePreparedStatementRequest(query=big))), TIMEOUT))):
        with pytest.raises(pa.ArrowInvalid, match="--max-statement-bytes"):
            call()
    update = flight.FlightDescriptor.for_command(P.pack(P.CommandStatementUpdate(query=big)))
    writer, reader = client.do_put(update, pa.schema([]), TIMEOUT)
    with pytest.raises(pa.ArrowInvalid, match="--max-statement-bytes"):
        writer.done_writing()
        reader.read()
        writer.close()


def test_error_mid_stream_keeps_its_status(srv):
    message = adbc_error(srv.url, "SELECT CAST(CASE WHEN value > 300000 THEN 'x' ELSE '1' END AS INT) "
                                  "FROM generate_series(1, 1000000)")
    assert "(InvalidArgument;" in message and "Cannot cast" in message, message
    assert_clean(message)


# --- library mode: Engine + FlightSqlServer without cli.py ---------------------------------

LIBRARY_SERVER = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {repo!r})
    from planner import errors as pe
    from planner.engine import Engine
    from flight_server.server import FlightSqlServer

    class RaisingEngine(Engine):
        # The real engine, plus 'RAISE <class>' for the error classes no cheap real
        # statement reaches (a model still training, a cancelled run, a bug).
        def prepare(self, sql):
            if sql.startswith("RAISE "):
                name = sql.split()[1]
                if name == "unexpected":
                    raise RuntimeError("secret internal detail")
                raise getattr(pe, name)(f"raised {{name}} on purpose")
            return super().prepare(sql)

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    server = FlightSqlServer(RaisingEngine({data!r}), "grpc://127.0.0.1:0")
    print(f"listening on grpc://127.0.0.1:{{server.port}}", flush=True)
    server.serve()
""")

LIBRARY_CASES = [  # class, gRPC code name (grpc-go spelling), pyarrow exception
    ("InvalidInput", "InvalidArgument", pa.ArrowInvalid),
    ("NotFound", "NotFound", pa.ArrowKeyError),
    ("AlreadyExists", "InvalidArgument", pa.ArrowInvalid),
    ("PermissionDenied", "PermissionDenied", flight.FlightUnauthorizedError),
    ("FailedPrecondition", "Unavailable", flight.FlightUnavailableError),
    ("ResourceExhausted", "Unavailable", flight.FlightUnavailableError),
    ("DeadlineExceeded", "DeadlineExceeded", flight.FlightTimedOutError),
    ("Cancelled", "Canceled", flight.FlightCancelledError),
    ("Unsupported", "Unimplemented", pa.ArrowNotImplementedError),
    ("Internal", "Internal", flight.FlightInternalError),
]


@pytest.fixture(scope="module")
def library_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("library")
    script = base / "serve.py"
    script.write_text(LIBRARY_SERVER.format(repo=str(REPO), data=str(base / "data")))
    log = open(base / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONTRACEBACKLIMIT"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=log, env=env)
    line = proc.stdout.readline().decode()
    match = re.search(r"listening on (\S+)", line)
    assert match, (line, (base / "server.log").read_text())
    yield match.group(1), base / "server.log"
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.mark.parametrize("name, code, pa_error", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_mode_every_class(library_server, name, code, pa_error):
    url, _ = library_server
    words = f"raised {name} on purpose"
    message = adbc_error(url, f"RAISE {name}")
    assert f"({code};" in message and words in message, message
    assert_clean(message, words)
    with pytest.raises(pa_error) as info:
        flight.connect(url).get_flight_info(statement(f"RAISE {name}"), TIMEOUT)
    assert_clean(str(info.value), words)
    meant = {"InvalidInput": "InvalidArgument", "Unsupported": "Unimplemented"}.get(name, name)
    assert str(info.value).endswith(f". Detail: {meant}"), str(info.value)


def test_library_mode_real_errors_and_rich_status(library_server):
    url, _ = library_server
    message = adbc_error(url, "SELECT * FROM nowhere")
    assert "(NotFound;" in message
    assert_clean(message, "nowhere")
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as info:
            cur.execute("SELEC 1")
    for key, value in info.value.details:  # trailers ADBC keeps: no traceback in any
        assert b"Traceback" not in value and b'File "' not in value, (key, value)
    # The rich status (grpc-status-details-bin) names the meant status, also for pyarrow.
    with pytest.raises(flight.FlightUnavailableError) as pa_info:
        flight.connect(url).get_flight_info(statement("RAISE FailedPrecondition"), TIMEOUT)
    status = RpcStatus.FromString(pa_info.value.extra_info)
    assert status.code == 14 and status.message == "raised FailedPrecondition on purpose"
    assert b"FAILED_PRECONDITION" in status.details[0].value


def test_library_mode_unexpected_error_is_an_incident(library_server):
    url, log_path = library_server
    message = adbc_error(url, "RAISE unexpected")
    assert "(Internal;" in message, message
    assert "RuntimeError" not in message and "secret internal detail" not in message, message
    assert_clean(message)
    incident = re.search(r"incident ([0-9a-f]+)", message).group(1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if f"incident {incident}" in log:
            break
        time.sleep(0.05)
    assert f"incident {incident}" in log
    after = log.split(f"incident {incident}", 1)[1]
    assert "Traceback" in after and "RuntimeError: secret internal detail" in after


def test_classify_covers_every_planner_error():
    """Every class planner.errors defines has its own row (none falls to the generic INTERNAL)."""
    meant = {"InvalidInput": "INVALID_ARGUMENT", "NotFound": "NOT_FOUND",
             "AlreadyExists": "ALREADY_EXISTS", "PermissionDenied": "PERMISSION_DENIED",
             "Cancelled": "CANCELLED", "Unsupported": "UNIMPLEMENTED", "Internal": "INTERNAL",
             "FailedPrecondition": "FAILED_PRECONDITION", "ResourceExhausted": "RESOURCE_EXHAUSTED",
             "DeadlineExceeded": "DEADLINE_EXCEEDED"}
    assert {cls.__name__ for cls in pe.PlannerError.__subclasses__()} == set(meant)
    for cls in pe.PlannerError.__subclasses__():
        code, _, message = classify(cls("x"))
        assert (REASONS[code], message) == (meant[cls.__name__], "x")


# --- auth: backoff, token store, handles bound to their creator ---------------------------

def basic(user: str, password: str) -> list[tuple[bytes, bytes]]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [(b"authorization", f"Basic {raw}".encode())]


def login(url: str, user: str, password: str):
    """One handshake; returns the bearer header pair."""
    client = flight.connect(url)
    return client.authenticate_basic_token(user, password, TIMEOUT)


def test_login_backoff(auth_srv):
    url = auth_srv.url
    for _ in range(3):  # --login-attempts 3: the third failure starts a 2 s window
        with pytest.raises(flight.FlightUnauthenticatedError, match="invalid user name or password"):
            login(url, "alice", "wrong")
    started = time.monotonic()
    refusals = []
    for password in ["wrong", "a-secret"] * 10:  # the right password too: refused unchecked
        with pytest.raises(flight.FlightUnauthenticatedError) as info:
            login(url, "alice", password)
        refusals.append(str(info.value))
    took = time.monotonic() - started
    assert all("too many failed logins" in m and re.search(r"retry in \d+ s", m) for m in refusals)
    assert_clean(refusals[0])
    assert took < 1.8, f"20 refusals took {took:.2f} s: they must not wait"  # sanity
    assert login(url, "bob", "b-secret")[0] == b"authorization"  # other users are unaffected

    # ADBC sees the same, cleanly, as Unauthenticated.
    with pytest.raises(flightsql.Error) as info:
        with flightsql.connect(url, db_kwargs={"username": "alice", "password": "a-secret"},
                               autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    message = str(info.value)
    assert "(Unauthenticated;" in message and "retry in" in message, message
    assert_clean(message)

    time.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
    key, value = login(url, "alice", "a-secret")  # the window is over: a success resets
    assert value.startswith(b"Bearer ")
    # ADBC's username/password login (unpadded base64 from Go) works.
    with flightsql.connect(url, db_kwargs={"username": "alice", "password": "a-secret"},
                           autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid user name or password"):
        login(url, "alice", "wrong")


def test_backoff_state_is_bounded_and_keeps_the_guessed_user():
    backoff = LoginBackoff(free_failures=3, base_delay=60, max_entries=100)
    for _ in range(3):
        backoff.failed("user:victim")
    rng = random.Random(7)
    for _ in range(5000):  # a spray of random names
        backoff.failed(f"user:{rng.getrandbits(64):x}")
    assert len(backoff) <= 200
    assert backoff.retry_after("user:victim") > 50  # not evicted by the spray
    backoff.succeeded("user:victim")
    assert backoff.retry_after("user:victim") == 0


def test_backoff_grows_and_is_capped():
    now = [0.0]
    backoff = LoginBackoff(free_failures=2, base_delay=1, max_delay=300, clock=lambda: now[0])
    windows = []
    for _ in range(14):
        windows.append(backoff.failed("user:x"))
        now[0] += windows[-1] + 0.001
    assert windows[:2] == [0.0, 1.0] and windows[2:5] == [2.0, 4.0, 8.0]
    assert max(windows) == 300.0 and windows[-1] == 300.0


def test_token_store_is_bounded_and_expires():
    now = [0.0]
    store = TokenStore(ttl=100, max_tokens=50, clock=lambda: now[0], sweep_every=10)
    first = store.issue("alice")
    tokens = [store.issue(f"u{i}") for i in range(49)]
    assert store.lookup(first) == "alice"  # used: moves to the recent end
    for i in range(200):
        store.issue(f"spray{i}")
    assert len(store) == 50
    assert store.lookup(tokens[0]) is None  # least recently used: evicted
    recent = store.issue("bob")
    now[0] = 101
    assert store.lookup(recent) is None  # expired
    store.issue("carol")  # sweeps the expired ones
    assert len(store) == 1


def test_many_logins_keep_working(auth_srv):
    tokens = {login(auth_srv.url, "carol", "c-secret")[1] for _ in range(20)}
    assert len(tokens) == 20
    client = flight.connect(auth_srv.url)
    for token in list(tokens)[:3]:
        options = flight.FlightCallOptions(headers=[(b"authorization", token)], timeout=10)
        info = client.get_flight_info(statement("SELECT 7 AS x"), options)
        assert client.do_get(info.endpoints[0].ticket, options).read_all().to_pylist() == [{"x": 7}]


def test_handles_belong_to_their_creator(auth_srv):
    url = auth_srv.url
    alice = flight.FlightCallOptions(headers=[login(url, "bob", "b-secret")], timeout=10)  # the owner
    mallory = flight.FlightCallOptions(headers=[login(url, "carol", "c-secret")], timeout=10)
    client = flight.connect(url)

    # A ticket: another user gets NOT_FOUND, as for an unknown ticket; the owner still can.
    info = client.get_flight_info(statement("SELECT 1 AS a"), alice)
    ticket = info.endpoints[0].ticket
    with pytest.raises(pa.ArrowKeyError, match="unknown or expired ticket") as refused:
        client.do_get(ticket, mallory).read_all()
    assert_clean(primary(str(refused.value)))
    cancel = P.CancelFlightInfoRequest(info=info.serialize()).SerializeToString()
    result = list(client.do_action(flight.Action(P.CANCEL_FLIGHT_INFO, cancel), mallory))
    assert P.parse(P.CancelFlightInfoResult, result[0].body.to_pybytes()).status == \
        P.CANCEL_STATUS_NOT_CANCELLABLE
    assert client.do_get(ticket, alice).read_all().to_pylist() == [{"a": 1}]

    # A prepared statement: invisible to another user on every RPC that takes its handle.
    request = P.ActionCreatePreparedStatementRequest(query="SELECT $1 + 1 AS b")
    created = list(client.do_action(flight.Action(P.CREATE_PREPARED_STATEMENT, P.pack(request)), alice))
    handle = P.unpack(created[0].body.to_pybytes()).prepared_statement_handle
    query = flight.FlightDescriptor.for_command(P.pack(P.CommandPreparedStatementQuery(
        prepared_statement_handle=handle)))
    update = flight.FlightDescriptor.for_command(P.pack(P.CommandPreparedStatementUpdate(
        prepared_statement_handle=handle)))
    for call in (lambda: client.get_flight_info(query, mallory),
                 lambda: client.get_schema(query, mallory)):
        with pytest.raises(pa.ArrowKeyError, match="unknown or expired prepared statement"):
            call()
    for command in (query, update):
        writer, reader = client.do_put(command, pa.schema([("p", pa.int64())]), mallory)
        with pytest.raises(pa.ArrowKeyError, match="unknown or expired prepared statement") as refused:
            writer.write_batch(pa.record_batch([pa.array([1])], names=["p"]))
            writer.done_writing()
            reader.read()
            writer.close()
        assert primary(str(refused.value)) == ("unknown or expired prepared statement handle; prepare "
                                               "the statement again. Detail: NotFound")
    close = P.pack(P.ActionClosePreparedStatementRequest(prepared_statement_handle=handle))
    list(client.do_action(flight.Action(P.CLOSE_PREPARED_STATEMENT, close), mallory))  # a no-op
    writer, reader = client.do_put(query, pa.schema([("p", pa.int64())]), alice)
    writer.write_batch(pa.record_batch([pa.array([41])], names=["p"]))
    writer.done_writing()
    reader.read()
    writer.close()
    info = client.get_flight_info(query, alice)
    assert client.do_get(info.endpoints[0].ticket, alice).read_all().to_pylist() == [{"b": 42}]


# --- errors of streaming RPCs, GetSchema, long messages (pyarrow.flight) ------------------

def test_streaming_rpc_errors_are_clean_for_pyarrow(srv):
    """DoGet, DoPut and DoExchange errors: the message pyarrow rebuilds from the trailers is
    clean, with the right class and the meant status; pyarrow then appends gRPC's debug
    string, which quotes gRPC's raw message (Python's detail, never a traceback: pyarrow
    offers no way to drop it, see flight_server/errors.py)."""
    client = flight.connect(srv.url)
    ticket = client.get_flight_info(statement("SELECT 1 AS a"), TIMEOUT).endpoints[0].ticket
    assert client.do_get(ticket, TIMEOUT).read_all().to_pylist() == [{"a": 1}]
    with pytest.raises(pa.ArrowKeyError) as reused:  # a ticket is good for one DoGet
        client.do_get(ticket, TIMEOUT).read_all()
    assert primary(str(reused.value)) == "unknown or expired ticket; run the statement again. Detail: NotFound"
    with pytest.raises(pa.ArrowInvalid) as garbage:
        client.do_get(flight.Ticket(b"not a ticket"), TIMEOUT).read_all()
    assert_clean(primary(str(garbage.value)))
    assert primary(str(garbage.value)).endswith(". Detail: InvalidArgument")
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"x"), TIMEOUT)
    with pytest.raises(pa.ArrowNotImplementedError) as exchange:
        writer.begin(pa.schema([("a", pa.int64())]))
        writer.done_writing()
        reader.read_all()
    with pytest.raises(pa.ArrowNotImplementedError):
        writer.close()  # the same status again
    assert primary(str(exchange.value)) == ("DoExchange is not supported: this is a Flight SQL server. "
                                            "Detail: Unimplemented")


def test_unauthenticated_detail_is_sent_once(auth_srv):
    """The server sends an authentication refusal's detail once (GetFlightInfo shows it so).
    pyarrow's FlightClient.get_schema prints a Flight detail a second time and raises a
    plain error (it checks the status with check_status): the message must still start
    with the clean text, and carry no Python detail."""
    client = flight.connect(auth_srv.url)
    core = "authentication required: send 'Authorization: Bearer <token>'"
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        client.get_flight_info(statement("SELECT 1"), TIMEOUT)
    assert str(info.value).count("Detail: Unauthenticated") == 1 and str(info.value).startswith(core), info.value
    assert_clean(str(info.value), core)
    with pytest.raises((flight.FlightUnauthenticatedError, OSError)) as info:
        client.get_schema(statement("SELECT 1"), TIMEOUT)
    assert str(info.value).startswith(core) and ". Detail: Unauthenticated" in str(info.value), info.value
    assert_clean(str(info.value), core)


def test_capped_messages():
    assert capped("x" * 2000) == "x" * 2000
    assert capped("x" * 2500) == "x" * 2000 + "... (500 characters omitted)"
    assert capped("abcdef", 4) == "abcd... (2 characters omitted)"
    _, _, message = classify(pe.InvalidInput("y" * 10_000))
    assert message == "y" * MAX_MESSAGE_CHARS + "... (8000 characters omitted)"
    error = flight_error(UNAVAILABLE, "z" * 5000)
    assert len(str(error)) < MAX_MESSAGE_CHARS + 100
    assert RpcStatus.FromString(error.extra_info).message == str(error)


def test_long_error_messages_are_capped(srv):
    name = "t" + "x" * 6000  # DataFusion's "table '...' not found" quotes it whole
    message = adbc_error(srv.url, f"SELECT * FROM {name}")
    assert "(NotFound;" in message and "characters omitted)" in message, message[:300]
    assert len(message) < MAX_MESSAGE_CHARS + 300, len(message)
    assert_clean(message)
    with pytest.raises(pa.ArrowKeyError) as info:
        flight.connect(srv.url).get_flight_info(statement(f"SELECT * FROM {name}"), TIMEOUT)
    assert "characters omitted)" in str(info.value) and len(str(info.value)) < MAX_MESSAGE_CHARS + 100
    assert_clean(str(info.value))


# --- metadata filter patterns: LIKE in linear time ----------------------------------------

def _regex_like(value: str, pattern: str | None) -> bool:
    """The former implementation (a backtracking regex): the reference on short inputs."""
    if pattern is None or pattern == "%":
        return True
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def test_like_semantics():
    name = "librispeech_train_data_table"
    for pattern, expected in [(None, True), ("%", True), ("", False), (name, True), ("libri%", True),
                              ("%table", True), ("%train%", True), ("%_data_%", True), ("libri", False),
                              ("_ibrispeech%", True), ("%Table", False), ("%tablex", False),
                              ("librispeech_train_data_tabl_", True), ("%%%%", True), ("%_", True),
                              ("%" * 14 + "!", False), ("%" * 14 + "e", True), ("l%a%b%l%e", True),
                              ("librispeech\\_train%", True), ("a.*", False)]:
        assert like(name, pattern) is expected, pattern
    assert like("", "") and like("", "%") and not like("", "_") and like("a\nb", "a_b")
    assert like("a%b", "a%b") and like("a.*b", "a.*b")
    # `\` escapes (GetSqlInfo's SQL_SEARCH_STRING_ESCAPE): JDBC tools escape the _ of names
    assert like("my_table", "my\\_table") and not like("myxtable", "my\\_table")
    assert like("100%", "100\\%") and not like("1000", "100\\%")
    assert like("x\\y", "x\\\\y") and like("x\\", "x\\")  # an escaped \, a trailing \
    rng = random.Random(11)
    for _ in range(20_000):
        value = "".join(rng.choice("ab_%\n") for _ in range(rng.randint(0, 8)))
        pattern = "".join(rng.choice("ab_%") for _ in range(rng.randint(0, 7)))
        assert like(value, pattern) == _regex_like(value, pattern), (value, pattern)


def test_like_hostile_patterns_take_milliseconds():
    name = "librispeech_train_data_table"
    started = time.perf_counter()
    for pattern in ["%" * 14 + "!", "%" * 5000 + "!", "%_" * 2000 + "!", "%a" * 1000 + "!",
                    ("%" + "_" * 10) * 300 + "!", "%l%i%b%r%i%s%p%e%e%c%h%" * 50 + "!"]:
        assert like(name, pattern) is False, pattern[:40]
        assert like(name * 4, pattern) is False
    assert like("a" * 3000, "%" + "a" * 30 + "%" + "a" * 30) is True
    assert not like("a" * 3000, "%" + "a" * 30 + "b")
    took = time.perf_counter() - started
    assert took < 0.5, f"{took:.3f} s"


def test_hostile_metadata_pattern_answers_at_once(srv):
    run(srv.url, "CREATE TABLE IF NOT EXISTS librispeech_train_data_table AS SELECT 1 AS a")
    client = flight.connect(srv.url)

    def fetch(command) -> pa.Table:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(P.pack(command)), TIMEOUT)
        return client.do_get(info.endpoints[0].ticket, TIMEOUT).read_all()

    hostile = "%" * 14 + "!"
    started = time.monotonic()
    assert fetch(P.CommandGetTables(table_name_filter_pattern=hostile)).num_rows == 0
    assert fetch(P.CommandGetTables(db_schema_filter_pattern=hostile, table_name_filter_pattern=hostile)
                 ).num_rows == 0
    assert fetch(P.CommandGetDbSchemas(db_schema_filter_pattern="%" * 40 + "!")).num_rows == 0
    took = time.monotonic() - started
    assert took < 3, f"{took:.2f} s"
    found = fetch(P.CommandGetTables(table_name_filter_pattern="%" * 14 + "_data_table"))
    assert found.column("table_name").to_pylist() == ["librispeech_train_data_table"]
    assert run(srv.url, "SELECT 2 AS b") == [(2,)]  # and the server keeps serving


# --- weak bearer tokens ---------------------------------------------------------------------

def test_short_bearer_tokens_are_warned_about_at_start(tmp_path):
    strong = "k" * 24
    server = ServerProcess(tmp_path / "data", "--token", "short-secret-1", "--token", strong,
                           env={"THANOSQL_API_TOKEN": "tiny-secret"}).start()
    try:
        log = server.server_log()
        assert re.search(r"WARNING .*weak bearer token: --token #1 is 14 characters long", log), log
        assert re.search(r"WARNING .*weak bearer token: THANOSQL_API_TOKEN is 11 characters long", log), log
        assert "--token #2" not in log and "short-secret-1" not in log and "tiny-secret" not in log
        for token in ["short-secret-1", strong, "tiny-secret"]:  # still accepted: a warning only
            options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())],
                                               timeout=10)
            info = flight.connect(server.url).get_flight_info(statement("SELECT 1 AS a"), options)
            assert info.schema.names == ["a"]
    finally:
        server.stop()


# --- fuzzing every RPC --------------------------------------------------------------------

MESSAGES = [cls for cls in {**P.SQL_MESSAGES, **P.FLIGHT_MESSAGES}.values()]
ACTIONS = [P.CREATE_PREPARED_STATEMENT, P.CREATE_PREPARED_SUBSTRAIT_PLAN, P.CLOSE_PREPARED_STATEMENT,
           P.BEGIN_TRANSACTION, P.BEGIN_SAVEPOINT, P.END_TRANSACTION, P.END_SAVEPOINT,
           P.CANCEL_QUERY, P.CANCEL_FLIGHT_INFO, P.RENEW_FLIGHT_ENDPOINT, P.SET_SESSION_OPTIONS,
           P.GET_SESSION_OPTIONS, P.CLOSE_SESSION, "", "NoSuchAction", "\x00\xff"]
FD = descriptor.FieldDescriptor


def random_value(rng: random.Random, field, depth: int):
    t = field.type
    if t == FD.TYPE_STRING:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(0, 24)))
    if t == FD.TYPE_BYTES:
        return rng.randbytes(rng.randrange(0, 40))
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_ENUM:
        return rng.choice(field.enum_type.values).number
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return rng.randrange(-2**31, 2**31)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return rng.randrange(0, 2**32)
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return rng.randrange(-2**63, 2**63)
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return rng.randrange(0, 2**64)
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.uniform(-1e6, 1e6)
    return None


def random_message(rng: random.Random, cls, depth: int = 0):
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.type == FD.TYPE_MESSAGE:
            if depth > 2 or field.message_type.GetOptions().map_entry:
                continue
            sub_cls = type(getattr(msg, field.name).add() if _repeated(field)
                           else getattr(msg, field.name))
            if _repeated(field):
                getattr(msg, field.name).pop()
                for _ in range(rng.randrange(0, 3)):
                    getattr(msg, field.name).add().CopyFrom(random_message(rng, sub_cls, depth + 1))
            else:
                getattr(msg, field.name).CopyFrom(random_message(rng, sub_cls, depth + 1))
            continue
        if _repeated(field):
            values = [random_value(rng, field, depth) for _ in range(rng.randrange(0, 4))]
            getattr(msg, field.name).extend(values)
        else:
            setattr(msg, field.name, random_value(rng, field, depth))
    return msg


def _repeated(field) -> bool:
    return field.is_repeated


def random_payload(rng: random.Random) -> bytes:
    """Random bytes, garbage in a known Any, a random-but-valid known message, or a valid
    message of the wrong kind, Any-wrapped or raw."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    cls = rng.choice(MESSAGES)
    url = P.TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name
    if kind == 1:
        return any_pb2.Any(type_url=url, value=rng.randbytes(rng.randrange(0, 60))).SerializeToString()
    msg = random_message(rng, cls)
    if kind == 4:
        return msg.SerializeToString()
    if kind == 3:
        url = url.replace("Command", "Comand") if rng.random() < 0.5 else "x/" + url
    return any_pb2.Any(type_url=url, value=msg.SerializeToString()).SerializeToString()


# Handshakes whose client writes payloads run in a child process: the gRPC C++ client
# aborts the whole process ("call_op_set.h: Check failed") when it writes on a Handshake
# the server has already answered, which this server does at once (credentials travel
# in headers). That is the client's crash; the server must simply survive it.
HANDSHAKE_PAYLOADS = textwrap.dedent("""
    import random, sys
    import pyarrow.flight as flight
    rng = random.Random(int(sys.argv[2]))

    class RandomHandshake(flight.ClientAuthHandler):
        def authenticate(self, outgoing, incoming):
            for _ in range(rng.randrange(1, 3)):
                outgoing.write(rng.randbytes(rng.randrange(0, 64)))

        def get_token(self):
            return b""

    client = flight.connect(sys.argv[1])
    for _ in range(10):
        try:
            client.authenticate(RandomHandshake(), flight.FlightCallOptions(timeout=10))
        except flight.FlightError:
            pass
        except Exception:
            pass
""")


def random_credentials(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """No header, or an Authorization header of a random scheme and printable garbage."""
    if rng.random() < 0.4:
        return []
    scheme = rng.choice(["Bearer", "Basic", "bearer", "Digest", ""])
    text = "".join(chr(rng.randrange(33, 127)) for _ in range(rng.randrange(0, 80)))
    return [(b"authorization", f"{scheme} {text}".encode())]


def fuzz_once(client: flight.FlightClient, rng: random.Random, rpc: str, with_credentials: bool) -> None:
    payload = random_payload(rng)
    headers = random_credentials(rng) if with_credentials else []
    options = flight.FlightCallOptions(timeout=10, headers=headers)
    if rpc == "GetFlightInfo":
        client.get_flight_info(flight.FlightDescriptor.for_command(payload), options)
    elif rpc == "GetSchema":
        client.get_schema(flight.FlightDescriptor.for_command(payload), options)
    elif rpc == "DoGet":
        client.do_get(flight.Ticket(payload), options).read_all()
    elif rpc == "DoPut":
        schema = pa.schema([("c", pa.int64())])
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(payload), schema, options)
        try:
            if rng.random() < 0.5:
                writer.write_batch(pa.record_batch([pa.array([1, 2])], schema=schema))
            writer.done_writing()
            reader.read()
        finally:
            writer.close()
    elif rpc == "DoAction":
        list(client.do_action(flight.Action(rng.choice(ACTIONS), payload), options))
    elif rpc == "ListFlights":
        list(client.list_flights(payload, options))
    elif rpc == "ListActions":
        client.list_actions(options)
    elif rpc == "Handshake":
        user = "".join(chr(rng.randrange(32, 0x300)) for _ in range(rng.randrange(0, 12)))
        client.authenticate_basic_token(user, rng.randbytes(8).hex(), options)


RPCS = ["GetFlightInfo", "GetSchema", "DoGet", "DoPut", "DoAction", "ListFlights", "ListActions",
        "Handshake"]


@pytest.mark.parametrize("which", ["open", "auth"])
def test_fuzz_every_rpc(srv, auth_srv, which):
    server = srv if which == "open" else auth_srv
    rng = random.Random(20240 + len(which))
    client = flight.connect(server.url)
    per_rpc = {"open": 30, "auth": 8}[which]
    outcomes: dict[str, int] = {}
    slowest = 0.0
    for rpc in RPCS:
        for i in range(per_rpc * (3 if rpc in ("DoAction", "GetFlightInfo", "DoGet") else 1)):
            started = time.monotonic()
            try:
                fuzz_once(client, rng, rpc, with_credentials=which == "auth")
                outcome = "ok"
            except (flight.FlightError, pa.ArrowException, NotImplementedError, KeyError, ValueError,
                    OSError) as exc:
                outcome = type(exc).__name__
                assert_clean(primary(str(exc)))
                assert not isinstance(exc, flight.FlightTimedOutError), (rpc, i, exc)
            slowest = max(slowest, time.monotonic() - started)
            outcomes[f"{rpc}:{outcome}"] = outcomes.get(f"{rpc}:{outcome}", 0) + 1
    child = subprocess.run([sys.executable, "-c", HANDSHAKE_PAYLOADS, server.url, str(len(which))],
                           capture_output=True, timeout=60)
    outcomes[f"Handshake:payloads-exit-{child.returncode}"] = 1
    assert server.alive(), server.server_log()[-3000:]
    assert slowest < 10
    assert "Traceback" not in server.server_log() or "incident" in server.server_log()
    if which == "open":
        assert run(server.url, "SELECT 42") == [(42,)]
    else:
        assert login(server.url, "carol", "c-secret")[1].startswith(b"Bearer ")
    # Every RPC was reached and answered (results or Flight errors, no hangs).
    assert {key.split(":")[0] for key in outcomes} == set(RPCS), outcomes
