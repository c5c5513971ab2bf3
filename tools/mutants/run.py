"""Run the named mutants of ``catalog.py``: put one bug in at a time, run the tests that must
catch it, put the code back, and print a table and a score.

    uv run python tools/mutants/run.py                 # every mutant
    uv run python tools/mutants/run.py 'seccomp-*'     # by name (shell-style patterns)
    uv run python tools/mutants/run.py --area auth     # by area
    uv run python tools/mutants/run.py --check         # only check every snippet applies
    uv run python tools/mutants/run.py --list

A mutant is ``killed`` when its tests fail (pytest exit status 1) and ``survived`` when they
pass. Before the mutants, each distinct test selection runs once on the unchanged code: a
selection that fails there proves nothing, so its mutants are reported as ``error``.

The file is changed in place and always put back: in a ``finally`` (Ctrl-C and SIGTERM
included), with a copy under ``tools/mutants/.backup/`` that the next run restores if this
one was killed outright. Test runs never write bytecode (``PYTHONDONTWRITEBYTECODE``), so no
cached mutant can outlive its run.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.mutants.catalog import MUTANTS, Mutant  # noqa: E402

BACKUP = Path(__file__).resolve().parent / ".backup"
LOCK = Path(__file__).resolve().parent / ".lock"
PYTEST = (sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")


class Stale(Exception):
    """The mutant's snippet is not in its file exactly once."""


@contextmanager
def only_run() -> Iterator[None]:
    """Hold the lock that makes this the only run: a second one would take the first one's
    backups for leftovers of a killed run and put its mutant back mid-test."""
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another mutation run is in progress in this checkout") from None
        yield


def restore_backups() -> list[str]:
    """Put back files a killed earlier run left mutated; return their paths."""
    restored = []
    if BACKUP.is_dir():
        for saved in sorted(p for p in BACKUP.rglob("*") if p.is_file()):
            relative = saved.relative_to(BACKUP)
            shutil.copyfile(saved, ROOT / relative)
            saved.unlink()
            restored.append(str(relative))
        shutil.rmtree(BACKUP, ignore_errors=True)
    return restored


def mutated_text(mutant: Mutant) -> str:
    text = (ROOT / mutant.file).read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise Stale(f"snippet found {count} times in {mutant.file}")
    return text.replace(mutant.original, mutant.replacement)


@contextmanager
def applied(mutant: Mutant) -> Iterator[None]:
    """The mutant in its file for the duration of the block; the file is put back however
    the block ends."""
    path = ROOT / mutant.file
    original = path.read_bytes()
    new = mutated_text(mutant)
    saved = BACKUP / mutant.file
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(original)
    try:
        path.write_text(new)
        yield
    finally:
        path.write_bytes(original)
        saved.unlink(missing_ok=True)
        if path.read_bytes() != original:  # pragma: no cover - a disk that lies
            raise RuntimeError(f"could not restore {mutant.file}: the copy is in {saved}")


def run_tests(tests: Sequence[str], timeout_s: float) -> tuple[str, float, str]:
    """(outcome, seconds, last lines): ``passed``, ``failed``, ``timeout`` or ``error``."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    proc = subprocess.Popen(
        [*PYTEST, *tests],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its process group is ours to kill on a timeout
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - start, _tail(out)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.monotonic() - start
    outcome = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    return outcome, seconds, _tail(out)


def _tail(out: bytes, lines: int = 3) -> str:
    """The first failing test (``-x`` stops there), else the last lines of the output."""
    text = out.decode(errors="replace").strip().splitlines()
    failed = [line for line in text if line.startswith(("FAILED ", "ERROR "))]
    return failed[0] if failed else " | ".join(text[-lines:])


def select(names: Sequence[str], area: str | None) -> list[Mutant]:
    chosen = [
        m
        for m in MUTANTS
        if (not names or any(fnmatch.fnmatch(m.name, pattern) for pattern in names))
        and (area is None or m.area == area)
    ]
    if not chosen:
        raise SystemExit(f"no mutant matches {list(names)} (area {area}): see --list")
    return chosen


def table(rows: list[tuple[str, str, str, str]]) -> str:
    headers = ("mutant", "area", "result", "seconds")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _raise_interrupt(signo: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutant names or shell-style patterns")
    parser.add_argument("--area", help="only the mutants of this area")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that snippets apply")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds per test run (default 900)"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the runs on the unchanged code"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with only_run():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    for path in restore_backups():
        print(f"restored {path}, left mutated by an earlier run that was killed")
    mutants = select(args.names, args.area)
    if args.list:
        for m in mutants:
            pending = f"  [pending: {m.pending}]" if m.pending else ""
            print(f"{m.name:44} {m.area:13} {m.allows}{pending}")
        return 0
    stale = {}
    for m in mutants:
        try:
            mutated_text(m)
        except Stale as exc:
            stale[m.name] = str(exc)
    for name, why in stale.items():
        print(f"STALE {name}: {why}")
    if args.check:
        return 1 if stale else 0

    broken: dict[tuple[str, ...], str] = {}
    if not args.no_baseline:
        for tests in dict.fromkeys(m.tests for m in mutants if m.name not in stale):
            outcome, seconds, tail = run_tests(tests, args.timeout)
            print(f"baseline {outcome:7} {seconds:6.1f}s  {' '.join(tests)}", flush=True)
            if outcome != "passed":
                broken[tests] = f"the tests fail without the mutant: {tail}"

    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    killed = survived = 0
    for m in mutants:
        if m.name in stale:
            rows.append((m.name, m.area, "stale", "-"))
            notes.append(f"{m.name}: {stale[m.name]}")
            continue
        if m.tests in broken:
            rows.append((m.name, m.area, "error", "-"))
            notes.append(f"{m.name}: {broken[m.tests]}")
            continue
        with applied(m):
            outcome, seconds, tail = run_tests(m.tests, args.timeout)
        result = {
            "failed": "killed",
            "timeout": "killed (timeout)",
            "passed": "survived",
        }.get(outcome, "error")
        if result.startswith("killed"):
            killed += 1
        elif result == "survived":
            survived += 1
            notes.append(
                f"{m.name}: survived, {m.allows}"
                + (f" [pending: {m.pending}]" if m.pending else "")
            )
        else:
            notes.append(f"{m.name}: pytest error: {tail}")
        rows.append((m.name, m.area, result, f"{seconds:.1f}"))
        caught = f": {tail}" if result == "killed" else ""
        print(f"{m.name}: {result} ({seconds:.1f}s){caught}", flush=True)

    print()
    print(table(rows))
    scored = killed + survived
    percent = f" ({100 * killed / scored:.0f}%)" if scored else ""
    print(f"\nscore: {killed}/{scored} killed{percent}")
    for note in notes:
        print(f"  {note}")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    raise SystemExit(main())
