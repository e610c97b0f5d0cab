"""Statement recognition: which statement a SQL text is, and its parts.

sqlglot's tokenizer does the lexing (strings, quoted identifiers, comments, numbers), so
no regex ever looks at raw SQL. The text after `AS` of an ML statement is handed to
DataFusion unchanged; everything that is not ours (or a DDL we must persist) is a plain
`Query` or `Dml` and goes to DataFusion as written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from sqlglot.errors import TokenError
from sqlglot.tokens import Token, Tokenizer, TokenType

from planner.errors import InvalidInput, Unsupported
from planner.limits import check_statement


# --- statement kinds -------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """A read-only statement DataFusion plans and runs (SELECT, WITH, VALUES, EXPLAIN...)."""
    sql: str
    tokens: tuple = field(default=(), compare=False, repr=False)  # when already lexed


@dataclass(frozen=True)
class Dml:
    """INSERT / UPDATE / DELETE, run by DataFusion against persisted listing tables."""
    sql: str
    tokens: tuple = field(default=(), compare=False, repr=False)  # when already lexed


@dataclass(frozen=True)
class CreateTable:
    """`CREATE TABLE name (column definitions)`, `CREATE TABLE name AS <query>`, or both
    (the query's columns, by position, cast to the declared ones)."""
    name: str
    sql: str
    query: str | None  # the query after AS; None with column definitions only
    if_not_exists: bool = False
    or_replace: bool = False
    columns: str | None = None  # the parenthesised column definitions, as written


@dataclass(frozen=True)
class CreateView:
    name: str
    sql: str
    or_replace: bool = False


@dataclass(frozen=True)
class CreateExternalTable:
    name: str
    location: str
    sql_before_location: str  # the statement up to the location literal
    sql_after_location: str
    if_not_exists: bool = False
    or_replace: bool = False


@dataclass(frozen=True)
class Drop:
    kind: str  # 'table' or 'view'
    names: tuple[str, ...]
    if_exists: bool = False


@dataclass(frozen=True)
class CopyFrom:
    """ThanoSQL's `COPY table [OPTIONS (...)] FROM 'file or folder'`."""
    table: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CopyTo:
    """DataFusion's `COPY (query) TO 'path'`: allowed once its path is checked.

    The target is the literal right after the statement's own TO (a parenthesised query is
    skipped whole, whatever literals it holds); the text around it is kept so the checked
    path replaces exactly that token."""
    sql: str
    path: str
    sql_before_path: str = ""  # the statement up to the target literal
    sql_after_path: str = ""


@dataclass(frozen=True)
class ListTables:
    pass


@dataclass(frozen=True)
class ListModels:
    pass


@dataclass(frozen=True)
class ListModelClasses:
    pass


@dataclass(frozen=True)
class ListDatasets:
    pass


@dataclass(frozen=True)
class GetDataset:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GetModel:
    name: str  # a pretrained model LIST THANOSQL MODEL shows (whisper_tiny_en, ...)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildModel:
    name: str
    class_name: str
    options: dict[str, Any]
    query: str


@dataclass(frozen=True)
class FitModel:
    name: str
    source_model: str
    options: dict[str, Any]
    query: str


@dataclass(frozen=True)
class Predict:
    model: str
    options: dict[str, Any]
    query: str


@dataclass(frozen=True)
class Evaluate:
    model: str
    options: dict[str, Any]
    query: str


@dataclass(frozen=True)
class PrintAudio:
    options: dict[str, Any]
    query: str


@dataclass(frozen=True)
class DeleteModel:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class CancelModel:
    """CANCEL MODEL name (our extension): stop the model's running BUILD / FIT."""
    name: str


@dataclass(frozen=True)
class DescribeModel:
    name: str


@dataclass(frozen=True)
class Explain:
    """EXPLAIN of one of our statements (plain SQL EXPLAIN is a DataFusion Query)."""
    statement: Any


ML_STATEMENTS = (BuildModel, FitModel, Predict, Evaluate, PrintAudio)


# --- the parser ------------------------------------------------------------------------

class _Cursor:
    """A position in the token list with the few look-ahead helpers the grammar needs."""

    def __init__(self, sql: str, tokens: list[Token]):
        self.sql = sql
        self.tokens = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def word(self, offset: int = 0) -> str:
        tok = self.peek(offset)
        if tok is None or tok.token_type == TokenType.IDENTIFIER or tok.token_type == TokenType.STRING:
            return ""
        return tok.text.upper()

    def accept(self, *words: str) -> bool:
        if all(self.word(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect(self, word: str, context: str) -> None:
        if not self.accept(word):
            found = self.peek()
            where = f"found '{found.text}'" if found else "the statement ended"
            raise InvalidInput(f"{context}: expected {word}, {where}")

    def name(self, what: str) -> str:
        """An identifier; unquoted ones fold to lower case as in DataFusion."""
        tok = self.peek()
        if tok is None:
            raise InvalidInput(f"expected {what}, but the statement ended")
        if tok.token_type == TokenType.IDENTIFIER:
            self.i += 1
            return tok.text
        if tok.token_type in (TokenType.STRING, TokenType.NUMBER) or not _is_word(tok.text):
            raise InvalidInput(f"expected {what}, found '{tok.text}'")
        self.i += 1
        return tok.text.lower()

    def string(self, what: str) -> str:
        tok = self.peek()
        if tok is None or tok.token_type != TokenType.STRING:
            found = f"'{tok.text}'" if tok else "the end of the statement"
            raise InvalidInput(f"expected {what} as a quoted string, found {found}")
        self.i += 1
        return tok.text

    def rest(self) -> str:
        """The raw text from the current token on, unchanged."""
        tok = self.peek()
        return "" if tok is None else self.sql[tok.start:].strip()

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    def done(self, context: str) -> None:
        if not self.at_end():
            raise InvalidInput(f"{context}: unexpected '{self.peek().text}'")


def _is_word(text: str) -> bool:
    return text.replace("_", "a").isalnum() and not text[0].isdigit()


def _tokenize(sql: str) -> list[Token]:
    try:
        tokens = Tokenizer().tokenize(sql)
    except TokenError as exc:
        raise InvalidInput(f"could not read the SQL text: {exc}") from None
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    if any(t.token_type == TokenType.SEMICOLON for t in tokens):
        raise InvalidInput("one statement per request, please: this text holds several (separated by ';')")
    if not tokens:
        raise InvalidInput("the SQL text is empty")
    check_statement(sql, tokens)
    return tokens


def tokenize(sql: str) -> list[Token]:
    """The statement's tokens (sqlglot's lexer), after the one-statement and shape limits."""
    return _tokenize(sql)


#: The statements that return a table and may stand in a query where a table can
#: (a subquery, a CTE, CREATE TABLE ... AS): planner/composition.py runs them first.
NESTABLE_STATEMENTS = (Predict, Evaluate, ListModels, ListModelClasses, ListDatasets, ListTables, DescribeModel)


def parse_options_text(text: str, context: str) -> dict[str, Any]:
    """`name=literal, ...` written inside a string (transcribe()'s options) read as the
    OPTIONS (...) clause of a statement: the same lexer and the same literals."""
    if not text.strip():
        return {}
    try:
        cur = _Cursor("OPTIONS (" + text + ")", _tokenize("OPTIONS (" + text + ")"))
        options = _options(cur)
        cur.done(context)
    except InvalidInput as exc:
        raise InvalidInput(f"{context}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{context}: the options nest too deeply to be read") from None
    return options


def parse(sql: str) -> Any:
    """Recognise one statement. Raises InvalidInput with a message naming the problem."""
    try:
        return _parse(sql)
    except RecursionError:  # a literal nested deeper than Python's stack (OPTIONS lists)
        raise InvalidInput("the statement nests too deeply to be read") from None


def _parse(sql: str) -> Any:
    cur = _Cursor(sql, _tokenize(sql))
    first = cur.word()
    if first == "EXPLAIN":
        # sqlglot lexes EXPLAIN as a command swallowing the rest: lex the rest again.
        rest = sql[cur.peek().end + 1:]
        inner = _Cursor(rest, _tokenize(rest))
        if inner.word() not in _OWN_STATEMENT_WORDS:
            return Query(sql)
        statement = _parse_own(inner)
        if not isinstance(statement, ML_STATEMENTS):
            raise InvalidInput("EXPLAIN applies to queries and to BUILD/FIT/PREDICT/EVALUATE")
        return Explain(statement)
    if first in _OWN_STATEMENT_WORDS:
        return _parse_own(cur)
    if first == "CREATE":
        return _parse_create(cur)
    if first == "DROP":
        return _parse_drop(cur)
    if first == "DELETE" and cur.word(1) == "MODEL":
        cur.i += 2
        if_exists = cur.accept("IF", "EXISTS")
        name = cur.name("a model name")
        cur.done("DELETE MODEL")
        return DeleteModel(name, if_exists)
    if first in ("INSERT", "UPDATE", "DELETE"):
        return Dml(sql, tuple(cur.tokens))
    if first in ("SET", "RESET"):
        raise Unsupported("SET changes the settings every client shares; this server does not allow it")
    if first in ("BEGIN", "START", "COMMIT", "ROLLBACK"):
        raise Unsupported("transactions are not supported: every statement commits on its own")
    if first in ("ALTER", "TRUNCATE", "PREPARE", "EXECUTE", "DEALLOCATE"):
        raise Unsupported(f"{first} is not supported by this server")
    return Query(sql, tuple(cur.tokens))


_OWN_STATEMENT_WORDS = {"BUILD", "FIT", "PREDICT", "EVALUATE", "LIST", "GET", "COPY", "PRINT", "DESCRIBE",
                        "CANCEL"}


def _parse_own(cur: _Cursor) -> Any:
    word = cur.word()
    if word == "BUILD":
        cur.expect("BUILD", "BUILD MODEL")
        cur.expect("MODEL", "BUILD MODEL")
        name = cur.name("a model name")
        cur.expect("USING", "BUILD MODEL name USING class")
        class_name = cur.name("a model class such as Wav2Vec2En")
        class_name = cur.tokens[cur.i - 1].text  # keep the class's spelling
        options = _options(cur)
        return BuildModel(name, class_name, options, _as_query(cur, "BUILD MODEL"))
    if word == "FIT":
        cur.expect("FIT", "FIT MODEL")
        cur.expect("MODEL", "FIT MODEL")
        name = cur.name("a model name")
        cur.expect("USING", "FIT MODEL name USING existing_model")
        source = cur.name("the model to continue training")
        options = _options(cur)
        return FitModel(name, source, options, _as_query(cur, "FIT MODEL"))
    if word in ("PREDICT", "EVALUATE"):
        cur.i += 1
        cur.expect("USING", f"{word} USING model")
        model = cur.name("a model name")
        options = _options(cur)
        query = _as_query(cur, word)
        return (Predict if word == "PREDICT" else Evaluate)(model, options, query)
    if word == "PRINT":
        cur.accept("PRINT")
        cur.expect("AUDIO", "PRINT AUDIO")
        options = _options(cur)
        return PrintAudio(options, _as_query(cur, "PRINT AUDIO"))
    if word == "LIST":
        cur.accept("LIST")
        if cur.accept("TABLE") or cur.accept("TABLES"):
            result = ListTables()
        elif cur.accept("MODEL") or cur.accept("MODELS"):
            result = ListModels()
        elif cur.accept("THANOSQL", "MODEL") or cur.accept("THANOSQL", "MODELS"):
            result = ListModelClasses()
        elif cur.accept("THANOSQL", "DATASET") or cur.accept("THANOSQL", "DATASETS"):
            result = ListDatasets()
        else:
            raise InvalidInput("LIST takes TABLE, MODEL, THANOSQL MODEL or THANOSQL DATASET")
        cur.done("LIST")
        return result
    if word == "GET":
        cur.accept("GET")
        cur.expect("THANOSQL", "GET THANOSQL DATASET")
        if cur.accept("MODEL"):
            name = cur.name("a pretrained model name such as whisper_tiny_en")
            options = _options(cur)
            cur.done("GET THANOSQL MODEL")
            return GetModel(name, options)
        cur.expect("DATASET", "GET THANOSQL DATASET")
        name = cur.name("a dataset name")
        options = _options(cur)
        cur.done("GET THANOSQL DATASET")
        return GetDataset(name, options)
    if word == "COPY":
        return _parse_copy(cur)
    if word == "DESCRIBE":
        if cur.word(1) != "MODEL":
            return Query(cur.sql)  # DataFusion's DESCRIBE table
        cur.i += 2
        name = cur.name("a model name")
        cur.done("DESCRIBE MODEL")
        return DescribeModel(name)
    if word == "CANCEL":
        cur.accept("CANCEL")
        cur.expect("MODEL", "CANCEL MODEL")
        name = cur.name("a model name")
        cur.done("CANCEL MODEL")
        return CancelModel(name)
    raise InvalidInput(f"unknown statement '{word}'")  # pragma: no cover - guarded by caller


def _parse_copy(cur: _Cursor) -> Any:
    cur.expect("COPY", "COPY")
    if _at(cur, TokenType.L_PAREN):
        _skip_parens(cur)
        return _copy_to(cur)
    table = cur.name("a table name")
    dotted = False
    while _at(cur, TokenType.DOT):  # COPY schema.table TO ...
        cur.i += 1
        cur.name("a table name")
        dotted = True
    if cur.word() == "TO":
        return _copy_to(cur)
    if dotted:
        raise InvalidInput("COPY table FROM 'path' takes a plain table name")
    options = _options(cur)
    if cur.word() == "TO":
        return _copy_to(cur)
    cur.expect("FROM", "COPY table [OPTIONS (...)] FROM 'path'")
    path = cur.string("the file or folder to copy from")
    cur.done("COPY")
    return CopyFrom(table, path, options)


def _at(cur: _Cursor, kind: TokenType) -> bool:
    tok = cur.peek()
    return tok is not None and tok.token_type == kind


def _skip_parens(cur: _Cursor) -> None:
    """Move past a balanced ( ... ) group starting at the current token (tokens, so
    parentheses inside literals, identifiers and comments do not count)."""
    depth = 0
    while not cur.at_end():
        kind = cur.peek().token_type
        cur.i += 1
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return
    raise InvalidInput("unbalanced parentheses: a ')' is missing")


def _copy_to(cur: _Cursor) -> CopyTo:
    """DataFusion's COPY source TO 'path': the literal right after this TO is the target."""
    cur.expect("TO", "COPY ... TO 'path'")
    tok = cur.peek()
    path = cur.string("the target path")
    return CopyTo(cur.sql, path, cur.sql[:tok.start], cur.sql[tok.end + 1:])


def _parse_create(cur: _Cursor) -> Any:
    cur.expect("CREATE", "CREATE")
    or_replace = cur.accept("OR", "REPLACE")
    cur.accept("UNBOUNDED")
    external = cur.accept("EXTERNAL")
    if cur.accept("TEMPORARY") or cur.accept("TEMP"):
        raise Unsupported("temporary tables are not supported: every table is persisted")
    if cur.accept("VIEW"):
        name = cur.name("a view name")
        return CreateView(name, cur.sql, or_replace)
    if not cur.accept("TABLE"):
        what = cur.word() or "that object"
        raise Unsupported(f"CREATE {what} is not supported: this server has one catalog and schema; "
                          "CREATE TABLE, CREATE VIEW and CREATE EXTERNAL TABLE are")
    if_not_exists = cur.accept("IF", "NOT", "EXISTS")
    name = cur.name("a table name")
    if external:
        # Column definitions and OPTIONS are skipped whole, so a column named location
        # or a literal 'location' is never taken for the clause.
        while not cur.at_end() and cur.word() != "LOCATION":
            if _at(cur, TokenType.L_PAREN):
                _skip_parens(cur)
            else:
                cur.i += 1
        cur.expect("LOCATION", "CREATE EXTERNAL TABLE ... LOCATION 'path'")
        tok = cur.peek()
        if _at(cur, TokenType.L_PAREN):
            raise Unsupported("CREATE EXTERNAL TABLE takes one LOCATION 'path' (a folder or a file), "
                              "not a list")
        location = cur.string("the LOCATION")
        return CreateExternalTable(name, location, cur.sql[:tok.start], cur.sql[tok.end + 1:],
                                   if_not_exists, or_replace)
    name = _table_in_public(cur, name)
    # Only `(column definitions)`, `AS query` or both: nothing else is handed to DataFusion
    # whole (it would run in a context without the path policy or the statement timeout).
    columns = None
    if _at(cur, TokenType.L_PAREN):
        start = cur.peek().start
        _skip_parens(cur)
        columns = cur.sql[start:cur.tokens[cur.i - 1].end + 1]
    query = None
    if cur.word() == "AS":
        cur.i += 1
        query = cur.rest()
        if not query:
            raise InvalidInput("CREATE TABLE ... AS needs a query after AS")
    elif not cur.at_end():
        raise InvalidInput(f"CREATE TABLE: unexpected '{cur.peek().text}'; write CREATE TABLE name "
                           "(column type, ...), CREATE TABLE name AS query, or both")
    if columns is None and query is None:
        raise InvalidInput("CREATE TABLE needs column definitions, e.g. CREATE TABLE t (a BIGINT), "
                           "or AS query")
    return CreateTable(name, cur.sql, query, if_not_exists, or_replace, columns)


def _table_in_public(cur: _Cursor, first: str) -> str:
    """A table name, optionally qualified as public.name or datafusion.public.name (the one
    schema tables are created in)."""
    parts = [first]
    while _at(cur, TokenType.DOT):
        cur.i += 1
        parts.append(cur.name("a table name"))
    if parts[:-1] not in ([], ["public"], ["datafusion", "public"]):
        raise InvalidInput(f"tables are created in schema public (catalog datafusion); "
                           f"'{'.'.join(parts)}' names another")
    return parts[-1]


def _parse_drop(cur: _Cursor) -> Any:
    cur.expect("DROP", "DROP")
    if cur.accept("MODEL"):
        if_exists = cur.accept("IF", "EXISTS")
        name = cur.name("a model name")
        cur.done("DROP MODEL")
        return DeleteModel(name, if_exists)
    if cur.accept("TABLE"):
        kind = "table"
    elif cur.accept("VIEW"):
        kind = "view"
    else:
        raise Unsupported(f"DROP {cur.word() or ''} is not supported; DROP TABLE, DROP VIEW and DROP MODEL are")
    if_exists = cur.accept("IF", "EXISTS")
    names = [cur.name(f"a {kind} name")]
    while cur.peek() and cur.peek().token_type == TokenType.COMMA:
        cur.i += 1
        names.append(cur.name(f"a {kind} name"))
    cur.accept("CASCADE") or cur.accept("RESTRICT")
    cur.done(f"DROP {kind.upper()}")
    return Drop(kind, tuple(names), if_exists)


def _as_query(cur: _Cursor, statement: str) -> str:
    if cur.word() != "AS":
        found = cur.peek()
        where = f"found '{found.text}'" if found else "the statement ended"
        raise InvalidInput(f"{statement} needs AS <query> after its options; {where}")
    cur.i += 1
    query = cur.rest()
    if not query:
        raise InvalidInput(f"{statement} needs a query after AS")
    return query


# --- OPTIONS (name = literal, ...) -----------------------------------------------------

def _options(cur: _Cursor) -> dict[str, Any]:
    if not cur.accept("OPTIONS"):
        return {}
    _expect_token(cur, TokenType.L_PAREN, "OPTIONS (")
    options: dict[str, Any] = {}
    if cur.peek() and cur.peek().token_type == TokenType.R_PAREN:
        cur.i += 1
        return options
    while True:
        key_tok = cur.peek()
        key = cur.name("an option name").lower()
        if key in options:
            raise InvalidInput(f"option '{key}' is given twice")
        _expect_token(cur, TokenType.EQ, f"OPTIONS: '=' after '{key_tok.text}'")
        first = cur.peek()
        options[key] = _literal(cur, key)
        tok = cur.peek()
        if tok and tok.token_type == TokenType.COMMA:
            cur.i += 1
            continue
        if tok is not None and tok.token_type != TokenType.R_PAREN:
            _not_one_literal(cur, key, first, tok)
        _expect_token(cur, TokenType.R_PAREN, "OPTIONS: ',' or ')'")
        return options


def _expect_token(cur: _Cursor, kind: TokenType, context: str) -> None:
    tok = cur.peek()
    if tok is None or tok.token_type != kind:
        found = f"'{tok.text}'" if tok else "the end of the statement"
        raise InvalidInput(f"expected {context}, found {found}")
    cur.i += 1


def _mapping(cur: _Cursor, key: str) -> dict[str, Any]:
    """{'name': literal, ...}: names are quoted text, each at most once."""
    cur.i += 1
    items: dict[str, Any] = {}
    while cur.peek() and cur.peek().token_type != TokenType.R_BRACE:
        name = cur.peek()
        if name.token_type != TokenType.STRING:
            raise InvalidInput(f"option '{key}': a {{...}} value maps quoted names to values, e.g. "
                               f"{{'CPU': 2}}; found {_shown(name.text)}")
        if name.text in items:
            raise InvalidInput(f"option '{key}': {name.text!r} is given twice")
        cur.i += 1
        _expect_token(cur, TokenType.COLON, f"':' after {name.text!r} in option '{key}'")
        items[name.text] = _literal(cur, key)
        nxt = cur.peek()
        if nxt is not None and nxt.token_type == TokenType.COMMA:
            cur.i += 1
        elif nxt is not None and nxt.token_type != TokenType.R_BRACE:
            raise InvalidInput(f"option '{key}': expected ',' or '}}' after the value of {name.text!r}, "
                               f"found {_shown(nxt.text)}")
    _expect_token(cur, TokenType.R_BRACE, f"the closing '}}' of option '{key}'")
    return items


_OPEN = {TokenType.L_BRACKET: TokenType.R_BRACKET, TokenType.L_PAREN: TokenType.R_PAREN}
_CLOSE = (TokenType.COMMA, TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE)
# A number as Python writes one, without its sign ('-' is a token of its own): 8, 1.5, 5., .5, 1e-4.
_INT_TEXT = re.compile(r"[0-9]+")
_NUMBER_TEXT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHOWN = 60  # characters of a bad value quoted in an error


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _run(cur: _Cursor, first: int) -> tuple[str, int]:
    """The text of tokens[first] and every token written after it with no space between
    (``1e5e5``, ``0x10``, ``1-1``, ``b'1'``), up to a comma or a closing bracket, and the
    index of the run's last token: a reader sees one word, so it is checked as one."""
    last = first
    while (last + 1 < len(cur.tokens) and cur.tokens[last + 1].start == cur.tokens[last].end + 1
           and cur.tokens[last + 1].token_type not in _CLOSE):
        last += 1
    return cur.sql[cur.tokens[first].start:cur.tokens[last].end + 1], last


def _not_one_literal(cur: _Cursor, key: str, first: Token | None, found: Token) -> None:
    """Refuse a value that goes on after its literal (``1 - 1``, ``'a' 'b'``, ``[1 2]``)."""
    written = cur.sql[first.start:found.start].strip() if first is not None else ""
    raise InvalidInput(f"option '{key}' must be exactly one literal (a number, 'text', True/False, NULL or "
                       f"a [list]); its value {_shown(written)} is followed by {_shown(found.text)} "
                       "(expressions are not evaluated)")


def _number(cur: _Cursor, key: str) -> int | float:
    """The number starting at the current token (NUMBER, or DOT before digits): an int, or a
    finite float; anything glued to it, or a value that overflows, is InvalidInput."""
    text, last = _run(cur, cur.i)
    cur.i = last + 1
    if not _NUMBER_TEXT.fullmatch(text):
        raise InvalidInput(f"option '{key}' has value {_shown(text)}, which is not one number; write a "
                           "plain number such as 8, 0.5 or 1e-4 (no expressions, hex or suffixes)")
    if _INT_TEXT.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (4,300)
            raise InvalidInput(f"option '{key}' has an integer of {len(text)} digits, far out of range") from None
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"option '{key}' has value {_shown(text)}, which is too large for a number "
                           "(it overflows to infinity)")
    if value == 0.0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        raise InvalidInput(f"option '{key}' has value {_shown(text)}, which is too small for a number "
                           "(it underflows to 0)")
    return value


def _literal(cur: _Cursor, key: str) -> Any:
    """Exactly one Python-like literal: 'text', 8, 1e-4, -3, True/False, None, [a, b], (a, b) or
    {'name': value, ...} (e.g. resources_per_worker={'CPU': 2, 'GPU': 1}).

    Anything else is InvalidInput naming the option: an expression (``1e999-1e999``,
    ``1-1``), a number with something glued to it (``0x10``, ``1_0``, ``1j``), a number that
    overflows to infinity, list items without commas, a name, a call.
    """
    tok = cur.peek()
    if tok is None:
        raise InvalidInput(f"option '{key}' has no value")
    kind = tok.token_type
    if kind == TokenType.STRING:
        cur.i += 1
        return tok.text
    if kind == TokenType.DASH:
        cur.i += 1
        nxt = cur.peek()
        if nxt is None or nxt.token_type not in (TokenType.NUMBER, TokenType.DOT):
            found = f"'{nxt.text}'" if nxt is not None else "the end of the statement"
            raise InvalidInput(f"option '{key}': '-' must precede a number, found {found}")
        return -_number(cur, key)
    if kind in (TokenType.NUMBER, TokenType.DOT):
        return _number(cur, key)
    if kind in _OPEN:
        cur.i += 1
        items = []
        closing = _OPEN[kind]
        while cur.peek() and cur.peek().token_type != closing:
            first = cur.peek()
            items.append(_literal(cur, key))
            nxt = cur.peek()
            if nxt is not None and nxt.token_type == TokenType.COMMA:
                cur.i += 1
            elif nxt is not None and nxt.token_type != closing:
                _not_one_literal(cur, key, first, nxt)
        _expect_token(cur, closing, f"the end of the list in option '{key}'")
        return items
    if kind == TokenType.L_BRACE:
        return _mapping(cur, key)
    if kind in _CLOSE:
        raise InvalidInput(f"option '{key}' has no value before {_shown(tok.text)}")
    text, last = _run(cur, cur.i)
    if kind == TokenType.IDENTIFIER:
        raise InvalidInput(f"option '{key}' has value \"{tok.text}\", a quoted name, not a literal; text "
                           f"values take single quotes, e.g. {key}='{tok.text}'")
    if last == cur.i and _is_word(tok.text) and text == tok.text:  # a bare word (not N'x', @x, ...)
        cur.i += 1
        word = tok.text.upper()
        if word == "TRUE":
            return True
        if word == "FALSE":
            return False
        if word in ("NONE", "NULL"):
            return None
        raise InvalidInput(f"option '{key}' has value {tok.text!r}, which is not a literal; quote text values, "
                           f"e.g. {key}='{tok.text}'")
    raise InvalidInput(f"option '{key}' has value starting {_shown(text)}, which is not a literal; a value is "
                       "a number, 'text', True/False, NULL or a [list]")
