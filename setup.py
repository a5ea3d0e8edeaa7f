"""Only the C part of the build (everything else is in pyproject.toml): the SQLite hash-chain checker
and the replay's reader of the facts contracts keep in lists.

They link the system's SQLite and OpenSSL (libcrypto) - the libraries Python's own sqlite3 and hashlib
use - and are optional: where they do not compile, the install goes on, ``Ledger.verify`` uses the
Python verifier alone and ``Ledger.fold`` reads every row in Python (slower, same result).
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
        ),
        Extension(
            "incentive_engine.core._lines",
            ["incentive_engine/core/_lines.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "incentive_engine.shell._contract_facts_sqlite",
            ["incentive_engine/shell/_contract_facts_sqlite.c"],
            libraries=["sqlite3"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
