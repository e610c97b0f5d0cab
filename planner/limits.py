"""Limits on what one statement may ask of the engine, checked before DataFusion sees it.

DataFusion plans and evaluates expressions recursively: a chain of 5,000 `+`, 2,000 `||`
or 12,000 `~` overflows a thread's stack and kills the whole process (SIGSEGV), where
every client is dropped. Its SQL parser refuses more than 50 nested parentheses, but a
flat chain of binary operators parses into a tree as deep as the chain is long. So the
depth of the expression trees is bounded here, from the tokens, with a measure that can
only err on the high side (it counts tokens, whatever the operators), and DataFusion's
threads get stacks big enough to hold well more than that (`RUST_MIN_STACK`, set before
DataFusion starts any thread).

Measured here (datafusion 55): `SELECT s||s||...` of 2,000 links crashes a 2 MiB stack;
5,000 run and 10,000 crash with 16 MiB (tokio's threads) or 8 MiB (the main thread);
6,000 links of `~`, `#>` or `AT TIME ZONE` run. The limit, 4,000 tokens, allows chains
of up to 2,000 binary operators.
"""

from __future__ import annotations

import os
import re

from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from planner.errors import InvalidInput

MAX_EXPRESSION_DEPTH = 4_000  # tokens: about 2,000 levels of a binary chain
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")  # $$ or $tag$, DataFusion's dollar quotes
MAX_QUERY_BLOCKS = 500  # SELECTs: UNION branches, CTEs, subqueries
MAX_JOINS = 127  # JOIN keywords (128 relations)
RUST_THREAD_STACK_BYTES = 16 << 20

T = TokenType
# Each link of an operator chain takes at least two tokens (operator and operand; prefix
# operators such as NOT nest through DataFusion's parser, which stops at 50), so a chain of
# N tokens is at most N/2 deep, whatever the operators are: no list of operators to miss.
_OPENERS = {T.L_PAREN: T.R_PAREN, T.L_BRACKET: T.R_BRACKET, T.L_BRACE: T.R_BRACE, T.CASE: T.END}
# Tokens that start a new, independent expression at the same level. Inside a CASE, WHEN,
# THEN and ELSE do; the CASE itself is one operand of the level around it.
_SEPARATORS = frozenset({
    T.COMMA, T.SELECT, T.FROM, T.WHERE, T.GROUP_BY, T.HAVING, T.ORDER_BY, T.LIMIT,
    T.OFFSET, T.ON, T.JOIN, T.VALUES, T.SET, T.WHEN, T.THEN, T.ELSE,
})
# Set operations chain whole queries; no separator ends their chain.
_SET_OPERATIONS = frozenset({T.UNION, T.INTERSECT, T.EXCEPT})


class _Level:
    """One level of nesting (parentheses, brackets, braces, CASE ... END)."""

    def __init__(self, closer: TokenType | None) -> None:
        self.closer = closer
        self.run = 0  # tokens since the last separator
        self.longest_run = 0
        self.set_operations = 0
        self.deepest_child = 0

    def token(self, kind: TokenType) -> None:
        if kind in _SEPARATORS:
            self.run = 0
        elif kind in _SET_OPERATIONS:
            self.set_operations += 1
            self.run = 0
        else:
            self.run += 1
            self.longest_run = max(self.longest_run, self.run)

    def depth(self) -> int:
        return self.longest_run + self.set_operations + self.deepest_child


def use_large_thread_stacks() -> None:
    """Give Rust threads (DataFusion's tokio workers) stacks that hold deep plans.

    Rust reads RUST_MIN_STACK once, when the process starts its first thread, so this
    must run before DataFusion does any work; an explicit setting is kept.
    """
    os.environ.setdefault("RUST_MIN_STACK", str(RUST_THREAD_STACK_BYTES))


def expression_depth(tokens: list[Token]) -> int:
    """An upper bound, in tokens, of how deep the statement's expression trees can be.

    Per nesting level: the longest run of tokens between two separators, plus the set
    operations, plus the deepest level nested in it (each level counts one more).
    """
    levels = [_Level(None)]
    for token in tokens:
        kind = token.token_type
        if kind == levels[-1].closer:
            inner = levels.pop()
            levels[-1].deepest_child = max(levels[-1].deepest_child, inner.depth() + 1)
            continue
        levels[-1].token(kind)
        if kind in _OPENERS:
            levels.append(_Level(_OPENERS[kind]))
    while len(levels) > 1:  # unbalanced: DataFusion will refuse it, but bound it anyway
        inner = levels.pop()
        levels[-1].deepest_child = max(levels[-1].deepest_child, inner.depth() + 1)
    return levels[0].depth()


def check_statement(sql: str, tokens: list[Token]) -> None:
    """Refuse a statement DataFusion could not plan or run safely (InvalidInput).

    `tokens` are sqlglot's (generic dialect). DataFusion's lexer reads a few constructs
    differently: `E'\\''` is one quote character to it but opens a string running to the next
    quote for sqlglot, which would hide whatever follows from the count. Where such a
    construct may be present (a string right after a letter, or a `$$` / `$tag$` quote;
    not a `$1` parameter, so prepared point queries are lexed once), the statement is
    counted again with sqlglot's PostgreSQL lexer, which reads them as DataFusion does,
    and the larger counts apply.
    """
    views = [tokens]
    if _DOLLAR_QUOTE.search(sql) or _prefixed_string(tokens):
        try:
            views.append(Postgres.Tokenizer().tokenize(sql))
        except TokenError:
            pass  # DataFusion will refuse what neither lexer reads
    for view in views:
        _check_view(view)


def _prefixed_string(tokens: list[Token]) -> bool:
    """Is there a string literal glued to a word before it (E'...', X'...', U&'...')?"""
    return any(b.token_type == T.STRING and b.start == a.end + (2 if a.token_type == T.AMP else 1)
               for a, b in zip(tokens, tokens[1:]))


def _check_view(tokens: list[Token]) -> None:
    depth = expression_depth(tokens)
    if depth > MAX_EXPRESSION_DEPTH:
        raise InvalidInput(
            f"an expression in the statement chains or nests {depth} tokens deep; the limit is "
            f"{MAX_EXPRESSION_DEPTH}. Split long chains of operators (for example use IN (...) "
            "instead of many ORs, or sum a column instead of adding many terms)")
    blocks = sum(1 for t in tokens if t.token_type == T.SELECT)
    if blocks > MAX_QUERY_BLOCKS:
        raise InvalidInput(
            f"the statement holds {blocks} SELECTs (subqueries, CTEs, UNION branches); the limit "
            f"is {MAX_QUERY_BLOCKS}: planning grows much faster than the statement (1,000 CTEs "
            "or UNION branches took seconds and gigabytes). Load the parts into a table first")
    joins = sum(1 for t in tokens if t.token_type == T.JOIN)
    if joins > MAX_JOINS:
        raise InvalidInput(
            f"the statement joins {joins + 1} relations; the limit is {MAX_JOINS + 1} (planning "
            f"time grows steeply with the number of joins: 250 took 3 s here)")
