"""The `data` item of a checkpoint step: each process's input iterator state (bytes) as its own file,
`process_<i>-of-<n>.bin`, written inside the same atomic step as the state (`checkpoint.Checkpointer`)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import orbax.checkpoint as ocp
from etils import epath


def _process_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.bin"


class DataStateHandler(ocp.CheckpointHandler):
    """Each process's input iterator state (bytes) as its own file in the step's `data` item."""

    def save(self, directory: epath.Path, args: "DataStateSave") -> None:
        (directory / _process_file()).write_bytes(args.state)

    def restore(self, directory: epath.Path, args: "DataStateRestore" = None) -> Optional[bytes]:
        path = directory / _process_file()
        return path.read_bytes() if path.exists() else None  # another process count wrote it: replay instead

    def metadata(self, directory: epath.Path) -> None:
        return None


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: bytes


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass
