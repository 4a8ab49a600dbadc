"""The whole bad-config corpus (tests/configs/bad/*.yaml, first line `# expect: <message>`) through the real CLI:
every file exits 2 with a message naming the key path, on stderr, without a traceback.

One process per file costs an interpreter start and monitord's imports (~1 s on a loaded 2-core machine), so a
driver imports monitord once and forks a child per file; each child runs `python -m monitord config check -c FILE`
exactly as the interpreter would (runpy, real argv, its own stdout/stderr and exit status). A few files also go
through fresh `python -m monitord` processes, `config check` and `run`, to show the driver changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_run import REPO, start_monitord

pytestmark = pytest.mark.e2e

BAD = sorted((REPO / "tests" / "configs" / "bad").glob("*.yaml"))

DRIVER = r"""
import json, os, runpy, sys, tempfile, traceback
import monitord.cli  # paid once; each child starts from here

results = []
with tempfile.TemporaryDirectory() as scratch:
    for index, path in enumerate(sys.argv[1:]):
        out_path, err_path = (os.path.join(scratch, f"{index}.{name}") for name in ("out", "err"))
        pid = os.fork()
        if pid == 0:  # the child: `python -m monitord config check -c PATH`
            for fd, name in ((1, out_path), (2, err_path)):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["monitord", "config", "check", "-c", path]
            code = 1
            try:
                runpy.run_module("monitord", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        with open(out_path) as out, open(err_path) as err:
            results.append({"path": path, "code": os.waitstatus_to_exitcode(status), "stdout": out.read(),
                            "stderr": err.read()})
print(json.dumps(results))
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def expected_message(path: Path) -> str:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# expect: "), f"{path.name}: the first line must be '# expect: <message>'"
    return first_line.removeprefix("# expect: ")


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


async def run_driver(paths: list[Path]) -> dict[str, Outcome]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DRIVER, *map(relative, paths), cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, stderr.decode()
    return {r["path"]: Outcome(r["code"], r["stdout"], r["stderr"]) for r in json.loads(stdout)}


async def run_fresh(*args: str) -> Outcome:
    proc = await start_monitord(*args)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return Outcome(proc.returncode, stdout.decode(), stderr.decode())


def assert_refused(path: Path, outcome: Outcome) -> None:
    name = relative(path)
    assert outcome.code == 2, f"{name}: exit {outcome.code}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, f"{name}:\n{outcome.stderr}"
    first, _, problems = outcome.stderr.partition("\n")
    assert first == f"monitord: invalid configuration {name}", first
    assert expected_message(path) in problems, f"{name}: expected {expected_message(path)!r} in\n{problems}"


def test_the_corpus_is_large() -> None:
    assert len(BAD) >= 30


async def test_every_bad_config_exits_2_naming_the_path() -> None:
    outcomes = await run_driver(BAD)
    assert len(outcomes) == len(BAD)
    failures = []
    for path in BAD:
        try:
            assert_refused(path, outcomes[relative(path)])
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} of {len(BAD)} bad configs:\n\n" + "\n\n".join(failures)


@pytest.mark.parametrize("name", ["bad_bool.yaml", "yaml_syntax.yaml"])
async def test_a_fresh_process_says_the_same(name: str) -> None:
    path = REPO / "tests" / "configs" / "bad" / name
    (driven,) = (await run_driver([path])).values()
    fresh = await run_fresh("config", "check", "-c", relative(path))
    assert fresh == driven
    assert_refused(path, fresh)
    ran = await run_fresh("run", "-c", relative(path))  # the daemon refuses it the same way, before starting
    assert_refused(path, ran)
