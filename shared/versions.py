"""The adapter-version rules, written once: the server (both adapter modes), the trainer's client
for this project's server, and its client for vLLM's own server all follow them.

- **next version**: every adapter a server loads gets a version greater than every version it has
  loaded before: the next one (``"next"``), or a greater number the push names. So a version never
  means two adapters, even across pushes from several clients.
- **keep-window**: a server keeps the active version loaded, the newest ``activated_keep``
  versions pushed to become active (training), and the newest ``evaluation_keep`` versions pushed
  with ``activate=false`` (evaluation); older ones are unloaded once no request uses them.
- **staleness**: a trainer that samples up to S optimizer steps ahead (``--max-staleness S``) asks
  for versions up to S pushes old while it pushes the next: a server must keep S + 2 versions.

The sequence a push follows, with the highest version spent, is ``AdapterLoads``: one per
process that numbers adapters (the server, and the trainer's client for vLLM's own server, which
numbers nothing itself).

Vocabulary, from flag to wire: ``adapter_version`` is the server's number of a pushed adapter
(``None``: the base model); ``policy_step`` is the optimizer step that made it (0: the initial one).
"""

from collections.abc import Mapping
from typing import Literal, Protocol

DEFAULT_ADAPTER_KEEP = 3  # versions of each kind a server keeps loaded unless told otherwise


class VersionConflict(ValueError):
    """A push named a version that is not greater than every version loaded before."""


def next_version(requested: Literal["next"] | int, highest: int) -> int:
    """The version a push is loaded as, given the highest version loaded so far (0: none).

    >>> next_version("next", 0), next_version("next", 4), next_version(9, 4)
    (1, 5, 9)
    >>> next_version(4, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    shared.versions.VersionConflict: version 4 is not greater than 4, the highest version loaded ...
    """
    version = highest + 1 if requested == "next" else requested
    if version <= highest:
        raise VersionConflict(
            f"version {version} is not greater than {highest}, the highest version loaded "
            '(push version "next" and the server gives the next one)'
        )
    return version


def kept_versions(
    activated: Mapping[int, bool], active: int | None, activated_keep: int, evaluation_keep: int
) -> set[int | None]:
    """The versions to keep loaded: the active one, the newest ``activated_keep`` of those pushed to
    become active, and the newest ``evaluation_keep`` of those pushed for evaluation only.
    ``activated`` maps every loaded version to whether it was pushed to become active.

    >>> loaded = {1: True, 2: True, 3: False, 4: True, 5: False, 6: False}
    >>> sorted(kept_versions(loaded, active=4, activated_keep=2, evaluation_keep=2))
    [2, 4, 5, 6]
    >>> sorted(kept_versions(loaded, active=4, activated_keep=1, evaluation_keep=1))  # merge mode: one active
    [4, 6]
    """
    keep: set[int | None] = {active}
    for pushed_to_activate, count in ((True, activated_keep), (False, evaluation_keep)):
        versions = sorted(version for version, flag in activated.items() if flag == pushed_to_activate)
        keep.update(versions[-count:] if count > 0 else [])
    return keep


def adapter_keep_for(max_staleness: int) -> int:
    """The versions a server must keep loaded for a trainer with ``--max-staleness`` S: the S a
    batch in flight may still ask for, the newest, and the one being pushed.

    >>> adapter_keep_for(0), adapter_keep_for(1), adapter_keep_for(4)
    (2, 3, 6)
    """
    return max_staleness + 2


class AdapterHolder(Protocol):
    """What holds the adapters, seen by ``AdapterLoads``: the server's adapter mode, or vLLM's own
    server behind the trainer's client. Each step is the holder's own I/O."""

    async def load(self, upload, version: int) -> None:
        """Check and load ``upload`` as ``version``, servable by its number, not yet active; raise to
        refuse it (nothing is loaded then)."""

    async def prove_applied(self, upload, version: int) -> None:
        """Raise ``shared.probe.AdapterNotApplied`` where the loaded version serves the base model
        although its adapter changes the model."""

    async def activate(self, version: int) -> None:
        """Make the loaded version the one ``"latest"`` samples with."""

    async def discard(self, version: int) -> None:
        """Unload a version that was refused after it was loaded."""

    async def retire(self) -> None:
        """Unload the versions outside the keep-window (``kept_versions``) that nothing uses."""


class AdapterLoads:
    """The sequence every adapter push follows, and the highest version it spent: one per process
    that numbers adapters.

    1. number the push: the next version, or the greater one it names (``next_version``; a
       ``VersionConflict`` before anything is loaded);
    2. the holder loads it; a load that fails spends no number;
    3. the number is spent, even if the push is refused below: a number means one adapter;
    4. pushed to become active: the holder proves it applied, or discards it and the push is
       refused (the previous version stays active); then it becomes the active version;
    5. the holder retires what left the keep-window.

    >>> import asyncio
    >>> class Holder:
    ...     async def load(self, upload, version): print("load", version)
    ...     async def prove_applied(self, upload, version): print("prove", version)
    ...     async def activate(self, version): print("activate", version)
    ...     async def discard(self, version): print("discard", version)
    ...     async def retire(self): print("retire")
    >>> class Push:
    ...     version, activate = "next", True
    >>> loads = AdapterLoads(highest=4)
    >>> asyncio.run(loads.push(Push(), Holder()))
    load 5
    prove 5
    activate 5
    retire
    5
    """

    def __init__(self, highest: int = 0) -> None:
        self.highest = highest  # the greatest version ever loaded here: a new one must exceed it

    async def push(self, upload, holder: AdapterHolder) -> int:
        """Run the sequence for ``upload`` (its ``version`` and ``activate``); return its version."""
        version = next_version(upload.version, self.highest)
        await holder.load(upload, version)
        self.highest = version
        if upload.activate:
            try:
                await holder.prove_applied(upload, version)
            except BaseException:
                await holder.discard(version)
                raise
            await holder.activate(version)
        await holder.retire()
        return version
