"""The `grace-fast` command line: one sub-command per job, each defined in the module that does the job.

A sub-command module provides `add_arguments(parser)` and `run(args) -> int`; only the chosen one is imported.

Every command ends the same way. Exit 0: done. Exit 1: a partial failure (some clips failed; the command lists
them, and a rerun retries them). Exit 2: a user error, printed as one line on stderr, `grace-fast COMMAND:
error: MESSAGE`, the message naming the argument, file or line to fix. Exit 130: stopped by SIGINT or SIGTERM
(rerun to continue). A user error is a bad argument (argparse's, or a check before the work starts), or an
exception of these types: UserError (grace_fast.errors; CheckpointError, VideoReadError and EndpointError are
ones), OSError (a file or folder missing, unreadable or unwritable) and a ValueError that a `raise` statement of
grace_fast raised (its checks of arguments, configs and file contents), in this process or in a worker process
(a ProcessPoolExecutor's or a DataLoader's). Any other exception, a ValueError from a library or from a failed
unpacking in grace_fast included, is a bug and keeps its traceback; `--debug` shows the traceback of user
errors too.
"""

import argparse
import dis
import importlib
import logging
import re
import sys
from pathlib import Path

from grace_fast import __version__
from grace_fast.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "caption": ("grace_fast.text.captioner", "caption clips with a local Video-LLaVA, or import captions (CATE)"),
    "crop-faces": ("grace_fast.data.face_crop", "write face-cropped copies of a folder of videos (MAFW, your own)"),
    "demo": ("grace_fast.demo", "the main job: synthetic set, tiny GRACE and its ablations trained and tested on CPU"),
    "coarse-labels": ("grace_fast.text.coarse_labels", "top-k emotions per clip from a baseline classifier (CATE)"),
    "make-synthetic": ("grace_fast.data.synthetic", "write the synthetic DFER set: mp4 faces in DFEW's layout"),
    "evaluate": ("grace_fast.evaluate", "UAR, WAR, per-class recall and confusion matrix of a checkpoint"),
    "explain": ("grace_fast.explain", "PNG of a clip's frames, motion weights and OT plan of its top text tokens"),
    "pretrain": ("grace_fast.train.pretrain", "self-supervised VideoMAE pretraining of the video tower (masked video)"),
    "predict": ("grace_fast.predict", "the emotion of each clip from a trained checkpoint"),
    "refine": ("grace_fast.text.refiner", "rewrite captions into emotion-aware descriptions with an LLM (CATE)"),
    "train": ("grace_fast.train.run", "train GRACE (one fold or the k-fold protocol), select on validation, test"),
}
USER_ERROR = 2
DEBUG_HELP = "show the traceback of user errors too"
PACKAGE = str(Path(__file__).resolve().parent)
DATALOADER_TRACEBACK = "Original Traceback (most recent call last):"
REMOTE_FRAME = re.compile(r'File "([^"]+)", line \d+, in [^\n]*\n\s*([^\n]*)')  # file and source line


class LogHandler(logging.Handler):
    """The package's log records on stderr as "LEVEL: message" lines (INFO bare), between progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        tqdm.write(prefix + record.getMessage(), file=sys.stderr)


def _show_logs() -> None:
    """Send grace_fast's INFO and above to stderr once per process (the library itself only logs)."""
    logger = logging.getLogger("grace_fast")
    if not any(isinstance(handler, LogHandler) for handler in logger.handlers):
        logger.addHandler(LogHandler())
    logger.setLevel(logging.INFO)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, as every user error of the commands (no usage block)."""

    def error(self, message: str):
        self.exit(USER_ERROR, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = Parser(prog="grace-fast", description="GRACE dynamic facial expression recognition.")
    parser.add_argument("--version", action="version", version=f"grace-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        if name == chosen:
            job = importlib.import_module(module)
            job.add_arguments(command)
            command.set_defaults(run=job.run)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version or a bad argument, printed already
        return stop.code or 0
    _show_logs()
    try:
        return args.run(args)
    except Exception as error:
        if args.debug or not is_user_error(error):
            raise
        print(f"grace-fast {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return USER_ERROR


def is_user_error(error: Exception) -> bool:
    """Whether error is the user's to fix (see the module doc) rather than a bug."""
    if isinstance(error, UserError | OSError):
        return True
    return isinstance(error, ValueError) and _raised_by_grace_fast(error)


def _raised_by_grace_fast(error: Exception) -> bool:
    """Whether a `raise` statement in grace_fast's code raised error: the instruction of its innermost frame, or
    for an error of a worker process, the source line of the worker's innermost frame."""
    remote = _worker_traceback(error)
    if remote is not None:
        frames = REMOTE_FRAME.findall(remote)
        return bool(frames) and frames[-1][0].startswith(PACKAGE) and frames[-1][1].startswith("raise ")
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_code.co_filename.startswith(PACKAGE):
        return False
    raising = (i.opname == "RAISE_VARARGS" for i in dis.get_instructions(tb.tb_frame.f_code) if i.offset == tb.tb_lasti)
    return any(raising)


def _worker_traceback(error: Exception) -> str | None:
    """The traceback, as text, of an error raised in a worker process: a ProcessPoolExecutor's (the demo's
    variants) brings it as the cause, a DataLoader's in the message; None for an error of this process."""
    if type(error.__cause__).__name__ == "_RemoteTraceback":
        return error.__cause__.tb
    return str(error) if DATALOADER_TRACEBACK in str(error) else None


def _one_line(error: Exception) -> str:
    """error's message on one line; for an error from a DataLoader worker, the last line of its message, which
    is the worker's message after its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if DATALOADER_TRACEBACK in lines:
        lines = [lines[-1].partition(": ")[2] or lines[-1]]
    return " ".join(lines) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
