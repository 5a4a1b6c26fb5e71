"""The README is part of the interface: every command and option is documented there, and every
`$ civitai-mirror …` example in it runs (against the demo's sample data and the fake API).

Markers at the end of an example line:
  ``# needs network``  not run (it talks to the real Civitai);
  ``# serves``         run until it prints its URL, then stopped.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from civitai_mirror.cli import COMMANDS, cli
from civitai_mirror.demo import prepare_demo
from civitai_mirror.samples import sample_models
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")

# commands documented together in one README section
SECTION_OF = {"pin": "match", "unpin": "match", "undo": "sort", "runs": "sort", "legacy": "sort"}


def section(name: str) -> str:
    match = re.search(rf"<!-- section: {re.escape(name)} -->(.*?)<!-- end: {re.escape(name)} -->", README, re.S)
    assert match, f"README has no section '{name}' (<!-- section: {name} --> … <!-- end: {name} -->)"
    return match.group(1)


def commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    found = []
    for name in sorted(COMMANDS):
        command = cli.get_command(ctx, name)
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", command.commands[sub]) for sub in sorted(command.commands)]
    return found


@pytest.mark.parametrize("name,command", commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_is_documented(name, command):
    top = name.split()[0]
    text = section(SECTION_OF.get(top, top))
    assert f"civitai-mirror {name}" in text, f"README section '{top}' never shows `civitai-mirror {name}`"
    for param in command.params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--") and opt != "--help":
                assert re.search(rf"{re.escape(opt)}\b", text), f"`{opt}` of `civitai-mirror {name}` is not in README"


def examples() -> list[str]:
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.startswith("$ civitai-mirror "):
                lines.append(line[2:])
    return lines


def test_readme_has_examples_for_the_pipeline():
    text = "\n".join(examples())
    for command in ("crawl", "build", "lookup", "serve", "scan", "hash", "extract", "inspect", "match",
                    "sort", "undo", "demo"):
        assert f"civitai-mirror {command}" in text


@pytest.fixture
def workdir(tmp_path, fake_civitai):
    """The demo's folder with its databases built: the world the README's examples live in."""
    root = prepare_demo(tmp_path / "w")
    derived = re.search(r"```\n(\[derived\]\n.*?)```", README, re.S)
    assert derived, "README shows no [derived] config example"
    (root / "config.ini").write_text(derived.group(1))
    fake_civitai.add_models(sample_models(root / "collection"))
    for args in (["build", "civitai-meta", "--db", "civitai.sqlite"],
                 ["scan", "collection", "--db", "library.sqlite"],
                 ["match", "--db", "library.sqlite", "--civitai-db", "civitai.sqlite"]):
        old = os.getcwd()
        os.chdir(root)
        try:
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
        finally:
            os.chdir(old)
        assert result.exit_code == 0, result.output
    return root, fake_civitai


SHELL = set("|*?;&<>$`~")  # an example with these needs bash (pipes, globs); the rest run in-process


def test_every_readme_example_runs(workdir):
    """Each example as typed: through bash when it uses the shell, else through the same click group
    in this process (a process per example cost ~0.5 s of interpreter start each)."""
    root, fake = workdir
    bindir = Path(sys.executable).parent
    if not (bindir / "civitai-mirror").exists() or shutil.which("bash") is None:
        pytest.skip("civitai-mirror is not installed as a script beside this Python")
    extra = {"CIVITAI_API_BASE": fake.api_base, "NO_COLOR": "1", "COLUMNS": "120"}
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    ran = 0
    for line in examples():
        command, _, marker = line.partition("  # ")
        marker = marker.strip()
        if marker == "needs network":
            continue
        if marker == "serves":
            port = _free_port()
            command = re.sub(r"--port \d+", "", command) + f" --port {port}"
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                seen = ""
                while "http://" not in seen:  # the URL line, after whatever the command prints first
                    line_out = proc.stdout.readline()
                    assert line_out, (command, seen[-2000:])
                    seen += line_out
                _wait_for(port)
            finally:
                proc.terminate()
                proc.wait(10)
        elif SHELL & set(command):
            done = subprocess.run(["bash", "-c", command], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        else:
            old = os.getcwd()
            os.chdir(root)
            try:
                result = CliRunner(env=extra).invoke(cli, shlex.split(command)[1:], prog_name="civitai-mirror")
            finally:
                os.chdir(old)
            assert result.exit_code == 0, (command, result.output[-2000:], repr(result.exception))
        ran += 1
    assert ran >= 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int) -> None:
    import urllib.request

    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/versions.json", timeout=2) as r:
                assert r.status == 200
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
