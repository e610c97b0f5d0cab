"""ThanoSQL's client side: an ADBC connection, a DataFrame client and the `%thanosql` magic.

    import thanosql
    conn = thanosql.connect("grpc://127.0.0.1:31337")      # a DB-API (ADBC) connection
    df = thanosql.Client("grpc://127.0.0.1:31337").query("LIST MODEL")

In Jupyter: `%load_ext thanosql`, then `%thanosql` / `%%thanosql` cells.
"""

from thanosql.client import Client
from thanosql.connection import connect
from thanosql.errors import ThanoSQLError

__all__ = ["Client", "ThanoSQLError", "connect", "load_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """`%load_ext thanosql`: register the %thanosql line and cell magic."""
    from thanosql.magic import ThanoSQLMagics
    ipython.register_magics(ThanoSQLMagics(ipython))
