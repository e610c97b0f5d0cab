"""What the client needs to know about a statement before sending it.

sqlglot's tokenizer (the one the server's parser uses) splits the text, so semicolons in
strings or comments never split a statement; the first words tell which statements are
long (BUILD / FIT / PREDICT / EVALUATE) and deserve a progress bar.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from sqlglot.errors import TokenError
from sqlglot.tokens import Token, Tokenizer, TokenType

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
    try:
        tokens = Tokenizer().tokenize(sql)
    except TokenError:
        return Statement(sql)
    if not tokens:
        return Statement(sql)
    words = [_word(t) for t in tokens]
    kind = words[0]
    model, i = None, None
    if kind in ("BUILD", "FIT") and words[1:2] == ["MODEL"] and len(tokens) > 2:
        model, i = _name(tokens[2]), 3
    elif kind in ("PREDICT", "EVALUATE") and words[1:2] == ["USING"] and len(tokens) > 2:
        model, i = _name(tokens[2]), 3
    elif kind == "PRINT":
        i = 2
    if i is None:
        return Statement(sql, kind)
    while i < len(tokens) and words[i] not in ("OPTIONS", "AS"):
        i += 1  # FIT MODEL new USING old ...
    options: dict = {}
    if i < len(tokens) and words[i] == "OPTIONS":
        options, i = _options(tokens, i + 1)
    query = None
    if i < len(tokens) and words[i] == "AS" and i + 1 < len(tokens):
        query = sql[tokens[i + 1].start:].strip()
    return Statement(sql, kind, model, options, query)


def _word(tok: Token) -> str:
    if tok.token_type in (TokenType.STRING, TokenType.IDENTIFIER):
        return ""
    return tok.text.upper()


def _name(tok: Token) -> str:
    """Unquoted names fold to lower case, as on the server."""
    return tok.text if tok.token_type == TokenType.IDENTIFIER else tok.text.lower()


def _options(tokens: list[Token], i: int) -> tuple[dict, int]:
    """Parse `(k=v, ...)` from tokens[i]; returns (options, index after ')')."""
    options: dict = {}
    if i >= len(tokens) or tokens[i].token_type != TokenType.L_PAREN:
        return options, i
    i += 1
    while i < len(tokens) and tokens[i].token_type != TokenType.R_PAREN:
        if i + 2 < len(tokens) and tokens[i + 1].token_type == TokenType.EQ:
            options[tokens[i].text.lower()] = _value(tokens[i + 2])
            i += 3
        else:
            i += 1
    return options, i + 1


def _value(tok: Token):
    if tok.token_type == TokenType.STRING:
        return tok.text
    try:
        return ast.literal_eval(tok.text)
    except (ValueError, SyntaxError):
        return tok.text
