"""The scripts around the Docker images, fast and without a Docker engine: scripts/api_key.py (the
compose files' one-shot ``api-key`` service) against a temporary folder, and the checks of
scripts/docker-cpu.sh (``--check``) with a PATH that lacks the tools they look for."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
API_KEY = ROOT / "scripts" / "api_key.py"


# ---- scripts/api_key.py --------------------------------------------------------------------------


def api_key(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(API_KEY), str(directory), *arguments], capture_output=True, text=True, check=False
    )


def stored(directory: Path) -> str:
    return (directory / "api_key").read_text().strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_without_a_given_key_one_is_generated_once_printed_once_and_kept(tmp_path):
    keys = tmp_path / "keys"
    first = api_key(keys, "--given", "/dev/null")  # compose's placeholder when GRPO_MATH_API_KEY is unset
    assert first.returncode == 0, first.stderr
    key = stored(keys)
    assert len(key) == 43  # secrets.token_urlsafe(32)
    assert key in first.stdout and "docker compose run --rm api-key --show" in first.stdout
    assert str(keys / "api_key") in first.stdout
    assert mode(keys / "api_key") == 0o600

    again = api_key(keys, "--given", str(tmp_path / "missing"))
    assert again.returncode == 0, again.stderr
    assert stored(keys) == key and key not in again.stdout and "kept" in again.stdout

    shown = api_key(keys, "--show")
    assert shown.returncode == 0 and shown.stdout.strip() == key


def test_a_given_key_wins_over_the_stored_one_and_is_never_printed(tmp_path):
    keys = tmp_path / "keys"
    api_key(keys)
    given = tmp_path / "given_api_key"
    given.write_text("my-own-key\n")
    result = api_key(keys, "--given", str(given))
    assert result.returncode == 0, result.stderr
    assert stored(keys) == "my-own-key" and "my-own-key" not in result.stdout
    assert mode(keys / "api_key") == 0o600
    assert "already in" in api_key(keys, "--given", str(given)).stdout


def test_a_kept_key_gets_mode_600_and_no_temporary_file_is_left(tmp_path):
    (tmp_path / "api_key").write_text("an-older-key\n")
    (tmp_path / "api_key").chmod(0o644)
    assert api_key(tmp_path).returncode == 0
    assert stored(tmp_path) == "an-older-key" and mode(tmp_path / "api_key") == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["api_key"]


def test_show_without_a_key_fails_and_says_how_one_is_made(tmp_path):
    result = api_key(tmp_path, "--show")
    assert result.returncode == 1 and "docker compose up" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- scripts/docker-cpu.sh --check ---------------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# a Docker CLI whose engine answers, keeps its images in $FAKE_DOCKER_ROOT and holds none
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
    info) if [ "$2" = --format ]; then echo "$FAKE_DOCKER_ROOT"; fi; exit 0 ;;
    *) exit 1 ;;
esac
"""


def bin_without(folder: Path, left_out: set[str], fake: dict[str, str]) -> Path:
    """A folder of links to every command on this PATH (and in /usr/sbin, /sbin) except
    ``left_out``, plus ``fake`` commands (name: script)."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name in left_out or entry.name in fake or target.exists() or target.is_symlink():
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                target.symlink_to(entry.path)
    for name, script in fake.items():
        (folder / name).write_text(script)
        (folder / name).chmod(0o755)
    return folder


def run_check(tmp_path: Path, *, missing: set[str], engine: bool, **environment: str) -> subprocess.CompletedProcess:
    """scripts/docker-cpu.sh --check, from a copy of the script in an otherwise empty checkout, with
    ``missing`` (and always the real docker, dockerd, debootstrap) off the PATH; ``engine``: a fake
    docker whose engine answers."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    script = checkout / "scripts" / "docker-cpu.sh"
    shutil.copy2(ROOT / "scripts" / "docker-cpu.sh", script)
    fake = {"docker": FAKE_DOCKER} if engine else {}
    stand_ins = {name: "#!/bin/sh\nexit 0\n" for name in {"dockerd", "debootstrap"} - missing}
    folder = bin_without(tmp_path / "bin", {"docker", "dockerd", "debootstrap"} | missing, {**fake, **stand_ins})
    env = {
        "PATH": str(folder),
        "HOME": str(tmp_path),
        "FAKE_DOCKER_ROOT": str(tmp_path),
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "DOCKER_CPU_MIN_FREE_GB": "0",
        **environment,
    }
    result = subprocess.run([str(script), "--check"], capture_output=True, text=True, env=env, check=False)
    assert sorted(path.name for path in checkout.iterdir()) == ["scripts"], "--check changed the checkout"
    return result


def debian_line(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Debian: apt-get install")]


def test_check_names_debootstrap_when_the_base_image_must_be_made(tmp_path):
    result = run_check(tmp_path, missing={"debootstrap"}, engine=True)
    assert result.returncode == 1
    assert "no debootstrap" in result.stderr and "CPU_BASE_IMAGE" in result.stderr
    assert debian_line(result) == ["Debian: apt-get install debootstrap"]
    # --check pulls nothing: it only asked the engine and looked for the base images
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert not [call for call in calls if call.split()[0] not in ("info", "image")]


def test_check_names_every_missing_package_in_one_message(tmp_path):
    result = run_check(tmp_path, missing={"debootstrap", "dockerd"}, engine=False, DOCKER_CPU_MIN_FREE_GB="1000000")
    assert result.returncode == 1
    assert "no Docker engine: no docker dockerd command" in result.stderr
    assert "no debootstrap" in result.stderr
    assert "GB free in" in result.stderr and "the build needs 1000000 GB" in result.stderr
    assert debian_line(result) == ["Debian: apt-get install docker.io debootstrap"]
    assert result.stderr.count("cannot build grpo-math:cpu") == 1


@pytest.mark.parametrize("environment", [{}, {"CPU_BASE_IMAGE": "my-python:3.11"}])
def test_check_passes_with_debootstrap_or_a_given_base(tmp_path, environment):
    missing = {"debootstrap"} if environment else set()
    result = run_check(tmp_path, missing=missing, engine=True, **environment)
    assert result.returncode == 0, result.stderr
    assert "checks passed" in result.stdout and result.stderr == ""


def test_check_stops_on_too_little_disk_with_no_package_to_install(tmp_path):
    result = run_check(tmp_path, missing=set(), engine=True, DOCKER_CPU_MIN_FREE_GB="1000000")
    assert result.returncode == 1
    assert f"GB free in {tmp_path}: the build needs 1000000 GB" in result.stderr
    assert debian_line(result) == []
