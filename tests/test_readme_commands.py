"""Every `snakemake ...` command of README.md runs as written: each is dry-run (``-n``) with its own
options (``--cores``, ``--profile``, ``--configfile``, ``--config``, targets).

The commands run from the repository (so their relative paths resolve as for a user) on a fresh
working directory (``--directory``: a temporary folder holding a copy of config.yaml), so nothing
is written into the checkout and no earlier run's state is needed: a dry run only plans. A dry run
submits nothing, so the SLURM profile's commands plan without a cluster. ``--report`` needs the
finished outputs (the README runs it after `make demo`): on a fresh tree it must get as far as
finding them missing. A dry run needs no ``--cores``; a command that runs jobs does, so that is
checked on the text (or its profile).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supreme_ecg.settings import REPO_ROOT

BIN = Path(sys.executable).parent
#: options after which Snakemake runs no job
NO_JOBS = {"-n", "--dry-run", "--dryrun", "--report", "--lint", "--list-rules", "--summary", "--dag", "--rulegraph"}
#: what the report says on a fresh tree, where no output marked for it exists yet
REPORT_NEEDS_OUTPUTS = re.compile(r"File \S+ marked for report but does not exist")


def readme_commands() -> list[str]:
    """`snakemake ...` lines of the README's code blocks and inline code (comments cut, `…` ones skipped)."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line.split(" #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`((?:\.venv/bin/)?snakemake [^`]+)`", prose)
    commands = [c.removeprefix(".venv/bin/") for c in lines + spans if re.match(r"(\.venv/bin/)?snakemake ", c)]
    return list(dict.fromkeys(c for c in commands if "…" not in c and "..." not in c))


def _gives_cores(args: list[str]) -> bool:
    """The command (or its profile) says how many cores/jobs to use."""
    if any(re.fullmatch(r"(--cores|--jobs|-c|-j)(=?\S+)?", a) for a in args):
        return True
    if "--profile" in args:
        profile = yaml.safe_load((REPO_ROOT / args[args.index("--profile") + 1] / "config.yaml").read_text())
        return bool({"cores", "jobs"} & set(profile))
    return False


def test_readme_has_snakemake_commands():
    assert len(readme_commands()) >= 5, readme_commands()


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, tmp_path):
    if shutil.which("snakemake", path=str(BIN)) is None:
        pytest.skip("snakemake is not installed beside this Python (make install)")
    args = shlex.split(command)[1:]
    runs_jobs = not NO_JOBS & set(args)
    assert not runs_jobs or _gives_cores(args), f"`{command}` runs jobs but gives no --cores (Snakemake refuses)"
    shutil.copy(REPO_ROOT / "config.yaml", tmp_path / "config.yaml")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--directory", str(tmp_path), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    if "--report" in args and proc.returncode and REPORT_NEEDS_OUTPUTS.search(output):
        assert "Creating report" in output, output[-3000:]
        return  # got to the report; its outputs come from a finished run
    assert proc.returncode == 0, f"`{command}` failed (dry run):\n{output[-4000:]}"
    if "--lint" in args:
        assert "workflow is in a good condition" in output, output[-3000:]
        return
    assert "This was a dry-run" in output or "Nothing to be done" in output, output[-3000:]
