#!/usr/bin/env python3
"""The API key of the Docker Compose pairs. compose.yaml's one-shot ``api-key`` service runs it
before the generator and the trainer start, with the ``api-key`` volume at DIR; they read the key
from DIR/api_key. Standard library only: it runs in both images (Dockerfile copies it in).

    api_key.py DIR [--given FILE] [--show-with COMMAND]   make sure DIR/api_key holds the key
    api_key.py DIR --show                                 print the key in DIR/api_key

- FILE holds a key (GRPO_MATH_API_KEY, which compose mounts as a secret): DIR/api_key becomes it.
- Else a key already in DIR/api_key is kept.
- Else a new one (``secrets.token_urlsafe(32)``) is written and printed, this once, with where it
  is stored and COMMAND, which prints it again.

DIR/api_key has mode 600 and is replaced in one step, so a reader never sees half a key.
"""

import argparse
import os
import secrets
import sys
from pathlib import Path

KEY_FILE = "api_key"


def read_key(path: Path) -> str:
    """The key in ``path``, or "" when the file is missing or blank."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def write_key(path: Path, key: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    os.replace(temporary, path)


def ensure_key(directory: Path, given_file: Path | None, show_with: str) -> str:
    """Make ``directory/api_key`` hold the key (the given one, else the stored one, else a new one);
    return what happened, for the log. The key itself is in it only when it was just generated."""
    path = directory / KEY_FILE
    given = read_key(given_file) if given_file is not None else ""
    stored = read_key(path)
    if given:
        if given == stored:
            return f"API key: GRPO_MATH_API_KEY, already in {path}"
        write_key(path, given)
        return f"API key: GRPO_MATH_API_KEY, written to {path}"
    if stored:
        path.chmod(0o600)
        return f"API key: kept the one in {path}; print it: {show_with}"
    key = secrets.token_urlsafe(32)
    write_key(path, key)
    return (
        "GRPO_MATH_API_KEY is not set, so this API key was generated for the generator and the trainer:\n"
        f"\n    {key}\n\n"
        f"It is stored in {path} (the api-key volume) and kept across restarts; print it again: {show_with}\n"
        "Clients send it as the header Authorization: Bearer <key>."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="the folder that holds api_key (the api-key volume)")
    parser.add_argument("--given", type=Path, help="a file that may hold the key to use (empty or missing: none)")
    parser.add_argument("--show", action="store_true", help="print the stored key and change nothing")
    parser.add_argument(
        "--show-with",
        default="docker compose run --rm api-key --show",
        help="the command a user types to print the key, for the log",
    )
    arguments = parser.parse_args(argv)
    if arguments.show:
        key = read_key(arguments.directory / KEY_FILE)
        if not key:
            print(f"no API key in {arguments.directory / KEY_FILE} yet: `docker compose up` makes one", file=sys.stderr)
            return 1
        print(key)
        return 0
    arguments.directory.mkdir(parents=True, exist_ok=True)
    print(ensure_key(arguments.directory, arguments.given, arguments.show_with), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
