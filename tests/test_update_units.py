"""The deployment files of `civitai-mirror update`: the systemd units in contrib/systemd/ are the ones
the README shows, they hold what a nightly run needs, `systemd-analyze verify` accepts them, and the
README's cron line runs the same command."""
from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from civitai_mirror.cli import COMMANDS, cli
from tests.conftest import REPO
from tests.test_readme import section

UNITS = REPO / "contrib" / "systemd"
SERVICE = UNITS / "civitai-mirror-update.service"
TIMER = UNITS / "civitai-mirror-update.timer"
#: the options issue 17 gives `update`; the units and the cron line use no others
ISSUE_OPTIONS = {"--dump", "--db", "--library", "--full-refresh", "--json", "--refresh-nights"}


def parse(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                     comment_prefixes=("#", ";"), empty_lines_in_values=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return unit


def exec_start() -> list[str]:
    return shlex.split(parse(SERVICE)["Service"]["ExecStart"])


def options_of(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def test_the_readme_shows_the_units_as_they_are():
    text = section("update")
    shown = dict(re.findall(r"`(contrib/systemd/[\w.-]+)`:\n\n```ini\n(.*?)```", text, re.S))
    assert set(shown) == {"contrib/systemd/civitai-mirror-update.service",
                          "contrib/systemd/civitai-mirror-update.timer"}
    for name, body in shown.items():
        assert body == (REPO / name).read_text(encoding="utf-8"), f"README's {name} differs from the file"


def test_the_service_runs_update_once_quietly_with_the_key_from_a_file():
    unit = parse(SERVICE)
    assert set(unit.sections()) == {"Unit", "Service"}  # started by the timer, never enabled itself
    service = unit["Service"]
    assert service["Type"] == "oneshot"
    for key in ("User", "WorkingDirectory", "EnvironmentFile", "TimeoutStartSec"):
        assert service.get(key), key
    assert service["Nice"].isdigit() and int(service["Nice"]) > 0
    assert service["IOSchedulingClass"] == "idle"
    assert re.fullmatch(r"(\d+)h", service["TimeoutStartSec"]) and int(service["TimeoutStartSec"][:-1]) >= 12
    assert "75" in service["SuccessExitStatus"].split()  # another update holds the lock: not a failure
    assert "network-online.target" in unit["Unit"]["After"] and "network-online.target" in unit["Unit"]["Wants"]
    argv = exec_start()
    assert Path(argv[0]).name == "civitai-mirror" and Path(argv[0]).is_absolute()
    assert argv[1] == "update"
    assert options_of(argv) <= ISSUE_OPTIONS and {"--dump", "--db", "--library"} <= options_of(argv)
    assert argv[argv.index("--dump") + 1] == "/var/lib/civitai-mirror/civitai-meta"
    assert argv[argv.index("--db") + 1] == "/var/lib/civitai-mirror/civitai.sqlite"
    assert argv[argv.index("--db") + 1].startswith(service["WorkingDirectory"])


def test_the_timer_fires_nightly_spread_and_catches_up():
    unit = parse(TIMER)
    assert set(unit.sections()) == {"Unit", "Timer", "Install"}
    timer = unit["Timer"]
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", timer["OnCalendar"])
    assert timer["RandomizedDelaySec"] and timer["Persistent"] == "true"
    assert unit["Install"]["WantedBy"] == "timers.target"
    assert timer.get("Unit", SERVICE.with_suffix(".service").name) == SERVICE.name


def test_the_cron_line_runs_the_same_command():
    lines = [line for line in section("update").splitlines() if re.match(r"^\d+ \d+ \* \* \* ", line)]
    assert len(lines) == 1
    argv = shlex.split(lines[0].split(" && ", 1)[1].split(" >>", 1)[0])
    assert Path(argv[0]).name == "civitai-mirror" and argv[1] == "update"
    assert options_of(argv) == options_of(exec_start())
    assert lines[0].endswith(">> update.log 2>&1") and "flock" not in lines[0]


@pytest.mark.skipif("update" not in COMMANDS, reason="civitai-mirror update is not registered yet")
def test_the_units_name_options_update_has():
    command = cli.get_command(click.Context(cli), "update")
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    assert options_of(exec_start()) <= known


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "civitai-mirror"
    if not exe.exists():
        pytest.skip("civitai-mirror is not installed as a script beside this Python")
    # verify checks that ExecStart's program exists: point it at this environment's script
    text = SERVICE.read_text(encoding="utf-8")
    (tmp_path / SERVICE.name).write_text(text.replace("/opt/civitai-mirror/bin/civitai-mirror", str(exe)))
    shutil.copy(TIMER, tmp_path / TIMER.name)
    done = subprocess.run([analyze, "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    said = [line for line in (done.stdout + done.stderr).splitlines() if "civitai-mirror-update" in line]
    assert done.returncode == 0 and not said, done.stdout + done.stderr
