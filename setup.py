"""Only the C part of the build (everything else is in pyproject.toml): the SQLite hash-chain checker.

It links the system's SQLite and OpenSSL (libcrypto) - the libraries Python's own sqlite3 and hashlib
use - and is optional: where it does not compile, the install goes on and ``Ledger.verify`` uses the
Python verifier alone (slower, same result).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "incentive_engine.shell._chain_sqlite",
            ["incentive_engine/shell/_chain_sqlite.c"],
            libraries=["sqlite3", "crypto"],
            extra_compile_args=["-O2", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
