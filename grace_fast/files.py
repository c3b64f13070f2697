"""Atomic file writes shared by every job that leaves files behind: a file is complete or absent, never half written;
and the readers of checkpoint files, whose errors name the file; JSON lines.

Files are shared artefacts (data sets, checkpoints, reports): each gets the permissions open() would give it,
0666 less the umask, although tempfile.mkstemp and safetensors make theirs 0600.
"""

import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grace_fast.errors import CheckpointError


def temporary_file(path: str | os.PathLike) -> Path:
    """A new empty file beside path (hidden, suffix .tmp) with the permissions open() would give path; the caller
    writes it and renames it to path, or deletes it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, shared_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return Path(tmp)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with the permissions open() would give path."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    os.chmod(path, shared_mode())


def read_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file, on the CPU; raises CheckpointError naming the file when it is truncated or
    is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise CheckpointError(_unreadable(path, error)) from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file's header; raises CheckpointError naming the file as read_safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            return file.metadata() or {}
    except SafetensorError as error:
        raise CheckpointError(_unreadable(path, error)) from None


def read_torch(path: str | os.PathLike) -> Any:
    """torch.load of a file of tensors and plain values (weights_only), on the CPU; raises CheckpointError naming
    the file when it is truncated or corrupt."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # a damaged file gives RuntimeError, EOFError, KeyError or UnpicklingError
        raise CheckpointError(_unreadable(path, error)) from None


def _unreadable(path: str | os.PathLike, error: Exception) -> str:
    """The message of a checkpoint file that cannot be read. torch's own suggests loading it with
    weights_only=False, which runs whatever code a corrupt or foreign file holds: it is left out."""
    text = str(error).strip()
    if "weights_only" in text:
        text = "it holds more than tensors and plain values"
    reason = f": {text.split('. ')[0].splitlines()[0]}" if text else ""
    return f"checkpoint file {path} cannot be read: truncated or corrupt ({type(error).__name__}{reason})"


def shared_mode() -> int:
    """The permissions open() gives a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc), since setting it to
    read it back races with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write data to path through a temporary file in the same folder, fsync and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_figure(figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure to path as a PNG through write_atomic, then close it; returns the path."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON lines, atomically (a temporary file in the same folder, then os.replace)."""
    write_atomic(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
