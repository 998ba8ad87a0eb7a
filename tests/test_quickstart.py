"""The README's quick start, as written, in a fresh shell and a fresh clone.

The block between `<!-- quickstart -->` and `<!-- /quickstart -->` is what a newcomer pastes.
`test_quick_start_runs_as_written` (slow: it installs `.venv` and trains the demo, minutes)
does exactly that:

- **Fresh clone**: `git clone` of this repository into `tmp_path`; the block and everything
  it runs come from the committed tree (uncommitted edits of this checkout are not in it).
- **Fresh shell**: `env -i` with only HOME, PATH=/usr/local/bin:/usr/bin:/bin and LANG, then
  `bash --noprofile --norc -e` on the block's lines, in the clone's root, in order, in one
  shell (so a `cd` or `source .venv/bin/activate` carries over, as when pasted).
- **No shortcut for .venv**: the clone installs its own `.venv` (`make demo` runs `make
  setup`). This checkout's `.venv` is neither linked nor copied: its editable install points at
  this checkout, its scripts' `#!` lines at this checkout's interpreter, and `make setup` in
  the clone would re-point it, so any reuse would change what the block does. pip's cache in
  HOME and the machine's pip configuration (/etc/pip.conf) apply, as for any user.
- **Servers** (`make ui`, `mlflow ui`, `.venv/bin/mlflow ui ...`) start in the background.
  The only addition to the environment is `MLFLOW_PORT` (the port `mlflow ui` listens on when
  neither the line nor its Makefile recipe gives `--port`), set to a free port so that the
  test never meets another server on 5000; a port the line fixes must be free beforehand. The test waits for the UI to answer, asks MLflow's REST API for each study
  the demo wrote under `runs/` (its experiment, the sweep's parent run, one finished child run
  per finished trial), then stops the server's process group.
- **`make test`** is this test suite itself: it is not run from inside a test (it would run
  this test again, and its verdict is the suite's own). The line is checked, not executed.

`test_the_quick_start_block_is_well_formed` (fast, in the default run) checks the block's
shape: one block, a demo, a server, `make test`, and every `make` target it names exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support.paths import REPO

BLOCK = re.compile(r"<!-- quickstart -->\s*```bash\n(.*?)^```\s*<!-- /quickstart -->", re.S | re.M)
SERVER = re.compile(r"^(make ui\b|(\S*/)?mlflow (ui|server)\b)")
SUITE = re.compile(r"^make test\s*(#.*)?$")
FRESH_PATH = "/usr/local/bin:/usr/bin:/bin"
RUN_TIMEOUT_S = 3600  # a fresh .venv (torch, mlflow, ray, ...) and the demo on a busy 2-core CPU
UI_TIMEOUT_S = 180


def quickstart_lines(readme: str) -> list[str]:
    """The block's commands: continuation lines joined, blank and comment-only lines dropped."""
    blocks = BLOCK.findall(readme)
    assert len(blocks) == 1, (
        f"README.md needs exactly one ```bash block between <!-- quickstart --> and "
        f"<!-- /quickstart -->, found {len(blocks)}"
    )
    lines: list[str] = []
    pending = ""
    for raw in blocks[0].splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def test_the_quick_start_block_is_well_formed():
    lines = quickstart_lines((REPO / "README.md").read_text(encoding="utf-8"))
    assert any(re.match(r"^make demo\b", ln) for ln in lines), lines
    assert any(SERVER.match(ln) for ln in lines), lines
    assert any(SUITE.match(ln) for ln in lines), lines
    targets = make_targets()
    for ln in lines:
        for cmd in re.split(r"&&|;|\|\|", ln.split(" #")[0]):
            words = shlex.split(cmd)
            if words and words[0] == "make":
                named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
                missing = [t for t in named if t not in targets]
                assert not missing, f"`{ln}`: no Makefile target {missing}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(lines: list[str], ui_log: Path) -> str:
    """The block as one bash script: servers in the background, `make test` checked only."""
    out = ["set -e"]
    for ln in lines:
        out.append(f"printf '+++ %s %s\\n' \"$(date +%T)\" {shlex.quote(ln)}")
        if SUITE.match(ln):
            out.append(": make test is this test suite: not run from inside a test")
        elif SERVER.match(ln):  # braces and a newline: a trailing `# comment` stays one
            out.append(f"{{ {ln}\n}} > {shlex.quote(str(ui_log))} 2>&1 &")
        else:
            out.append(ln)
    return "\n".join(out) + "\n"


def fixed_port(line: str, clone: Path) -> int | None:
    """The port a server line names itself (`--port N` on the line, or in the recipe of the
    Makefile target it runs), None when it leaves it to mlflow (then MLFLOW_PORT decides)."""
    where = line
    target = re.match(r"^make (\S+)", line)
    if target:
        recipe = re.search(
            rf"^{re.escape(target.group(1))}\s*:[^\n]*\n((?:\t[^\n]*\n?)*)",
            (clone / "Makefile").read_text(encoding="utf-8"),
            re.M,
        )
        where = recipe.group(1) if recipe else ""
    match = re.search(r"--port[= ](\d+)\b", where)
    return int(match.group(1)) if match else None


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def rest(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_for_ui(base: str, pgid: int, ui_log: Path) -> None:
    deadline = time.monotonic() + UI_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            pytest.fail(f"the UI exited before it answered:\n{tail(ui_log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"the UI did not answer on {base} in {UI_TIMEOUT_S} s:\n{tail(ui_log)}")
        time.sleep(1)


def tail(path: Path, n: int = 60) -> str:
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def stop_group(pgid: int) -> None:
    """SIGTERM the process group this test started (the block's shell and its server), then
    SIGKILL whatever is left after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def check_study(base: str, clone: Path, study: str) -> int:
    """The study's experiment, parent run and finished child runs, as MLflow's REST API sees
    them; returns the number of finished trials."""
    from bilma.runs import schema

    query = urllib.parse.urlencode({"experiment_name": study})
    exp = rest(base, f"/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    runs = rest(base, "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])  # fmt: skip

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get(schema.TAG_KIND) == "sweep"]
    assert len(parents) == 1, f"study {study}: {len(parents)} parent runs"
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in runs if tags(r).get(schema.TAG_PARENT_RUN) == parent_id]
    finished = {tags(r).get(schema.TAG_TRIAL_ID) for r in children
                if r["info"]["status"] == "FINISHED"}  # fmt: skip
    done = {d.name for d in (clone / "runs" / study).iterdir() if (d / schema.RESULT_FILE).exists()}
    assert done, f"study {study}: no finished trial under runs/{study}/"
    assert finished == done, f"study {study}: MLflow's finished child runs {finished} != {done}"
    return len(done)


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    clone = tmp_path / "bilma"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    lines = quickstart_lines((clone / "README.md").read_text(encoding="utf-8"))
    log, ui_log, block = tmp_path / "quickstart.log", tmp_path / "ui.log", tmp_path / "block.sh"
    block.write_text(script(lines, ui_log))
    port = fixed_port(next(ln for ln in lines if SERVER.match(ln)), clone)
    if port is None:
        port = free_port()  # the server line leaves the port to mlflow: MLFLOW_PORT
    else:
        assert port_is_free(port), f"port {port}, which the quick start's UI uses, is taken"
    env = {
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PATH": FRESH_PATH,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "MLFLOW_PORT": str(port),
    }
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
           "bash", "--noprofile", "--norc", str(block)]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=clone, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    pgid = proc.pid
    try:
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the quick start ran past {RUN_TIMEOUT_S} s:\n{tail(log)}")
        assert rc == 0, f"the quick start failed (exit {rc}):\n{tail(log)}"
        output = log.read_text(errors="replace")
        assert re.search(r"chance", output, re.I), f"the demo printed no chance level:\n{tail(log)}"

        base = f"http://127.0.0.1:{port}"
        wait_for_ui(base, pgid, ui_log)
        studies = sorted(d.name for d in (clone / "runs").iterdir() if d.is_dir())
        assert studies, "the demo wrote no study under runs/"
        for study in studies:
            check_study(base, clone, study)
    finally:
        stop_group(pgid)
        # The clone's .venv is a full install (GBs): not worth keeping in pytest's tmp dirs.
        subprocess.run(["rm", "-rf", str(clone / ".venv")], check=False)
