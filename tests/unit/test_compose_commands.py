"""Every command the compose file runs is a real `queuewatch` subcommand.

The image's entrypoint is `queuewatch`, so a service's `command:` is the rest of a command
line. Each one is run here with `--help` through the installed console script, the same
entry point the image uses: a renamed or missing subcommand fails this test, not a deployment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from queuewatch.resources import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "infra" / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "infra" / "Dockerfile"


def _queuewatch_commands() -> dict[str, list[str]]:
    """Service name -> command, for every service built from infra/Dockerfile."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {
        name: [str(arg) for arg in service["command"]]
        for name, service in services.items()
        if service.get("build", {}).get("dockerfile") == "infra/Dockerfile"
    }


COMMANDS = _queuewatch_commands()


def _queuewatch() -> list[str]:
    script = Path(sys.executable).parent / "queuewatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "queuewatch"]


def _help_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """`queuewatch <command> --help` of every service, run side by side (each starts Python)."""
    # Settings from the developer's shell must not change what the help run sees.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEWATCH_")}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    procs = {
        service: subprocess.Popen(
            [*_queuewatch(), *command, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for service, command in COMMANDS.items()
    }
    results = {}
    for service, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[service] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """The help runs, once per module."""
    return _help_runs()


def test_the_compose_file_runs_each_queuewatch_service_it_should() -> None:
    assert COMMANDS == {
        "topics": ["topics"],
        "migrate": ["migrate"],
        "aggregator": ["aggregator"],
        "raw-sink": ["sink", "raw"],
        "window-sink": ["sink", "windows"],
        "dashboard": ["dashboard"],
        "simulator": ["simulate"],
    }


def test_the_image_entrypoint_is_the_queuewatch_command() -> None:
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert entrypoints == ['["queuewatch"]']


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_a_service_command_is_a_real_subcommand_whose_help_succeeds(
    help_runs: dict[str, subprocess.CompletedProcess[str]], service: str
) -> None:
    command = COMMANDS[service]
    proc = help_runs[service]
    assert proc.returncode == 0, (
        f"`queuewatch {' '.join(command)} --help` failed ({proc.returncode}): "
        f"{proc.stderr.strip() or proc.stdout.strip()}"
    )
    assert "Usage:" in proc.stdout
    # Every option the compose file passes must be one the command documents.
    for option in (arg.split("=")[0] for arg in command if arg.startswith("--")):
        assert option in proc.stdout, f"{service}: {option} is not an option of the command"
