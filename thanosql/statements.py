"""What the client needs to know about a statement before sending it.

sqlglot's tokenizer (the one the server's parser uses) splits the text, so semicolons in
strings or comments never split a statement. What a statement is (its kind, model,
OPTIONS and inner query) is read by the server's own parser, planner.statements (pure
Python over sqlglot's tokens: importing it brings in no DataFusion, torch or pyarrow), so
the client and the server never disagree about a statement; the server stays the
authority on whether it is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot.errors import TokenError
from sqlglot.tokens import Tokenizer, TokenType

from thanosql.errors import ThanoSQLError


@dataclass(frozen=True)
class Statement:
    sql: str
    kind: str = ""             # first keyword, upper case: SELECT, BUILD, PREDICT, ...
    model: str | None = None   # the model a BUILD / FIT trains, or PREDICT / EVALUATE uses
    options: dict = field(default_factory=dict)
    query: str | None = None   # the query after AS, for ML statements


def split(sql: str) -> list[str]:
    """The statements of `sql`, without their semicolons; unreadable text stays whole."""
    try:
        tokens = Tokenizer().tokenize(sql)
    except TokenError:
        return [sql.strip()] if sql.strip() else []
    pieces, start, seen = [], 0, False
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if seen:
                pieces.append(sql[start:tok.start].strip())
            start, seen = tok.end + 1, False
        else:
            seen = True
    if seen:
        pieces.append(sql[start:].strip())
    return pieces


def single(sql: str) -> Statement:
    """The one statement in `sql`; ThanoSQLError for none or several."""
    pieces = split(sql)
    if not pieces:
        raise ThanoSQLError("no statement to run")
    if len(pieces) > 1:
        raise ThanoSQLError(f"Multiple Queries are not supported: this holds {len(pieces)} statements; "
                            "run each in its own cell (or call)")
    return describe(pieces[0])


def describe(sql: str) -> Statement:
    """The statement's kind, and for ML statements its model, options and query, as the
    server's own parser (planner.statements) reads them: one grammar, one OPTIONS reader.

    Text that parser refuses is still sent: the server reports the problem, so the
    client never has a second opinion on what is valid."""
    from planner.errors import PlannerError
    from planner.statements import parse

    kind = _first_word(sql)
    try:
        parsed = parse(sql)
    except PlannerError:
        return Statement(sql, kind)
    if kind == "EXPLAIN":
        return Statement(sql, kind)
    model = getattr(parsed, "model", None) or getattr(parsed, "name", None)
    if kind not in ("BUILD", "FIT", "PREDICT", "EVALUATE"):
        model = None
    return Statement(sql, kind, model, dict(getattr(parsed, "options", None) or {}),
                     getattr(parsed, "query", None))


def _first_word(sql: str) -> str:
    try:
        tokens = Tokenizer().tokenize(sql)
    except TokenError:
        return ""
    for tok in tokens:
        if tok.token_type not in (TokenType.STRING, TokenType.IDENTIFIER, TokenType.SEMICOLON):
            return tok.text.upper()
        return ""
    return ""
