"""Running the real `incentive` command in tests: in-process through the same entry point (fast), or as a
subprocess of the installed console script (for process-level behaviour: exit codes, crashes)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    code: int
    out: str
    err: str


def incentive(*args: str, db: str, in_process: bool = True, cwd: Path | None = None) -> Run:
    argv = ["--db", db, *args]
    if not in_process:
        exe = shutil.which("incentive", path=str(Path(sys.executable).parent)) or "incentive"
        p = subprocess.run(
            [exe, *argv], capture_output=True, text=True, cwd=cwd, timeout=600, env={**os.environ, "COLUMNS": "200"}
        )
        return Run(p.returncode, p.stdout, p.stderr)
    from incentive_engine.shell.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["incentive", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return Run(code, out.getvalue(), err.getvalue())


def ok(*args: str, db: str, **kw) -> str:
    r = incentive(*args, db=db, **kw)
    assert r.code == 0, f"incentive {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
    return r.out
