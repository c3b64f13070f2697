"""The errors that are the user's to fix: the command line prints their message on one line and exits 2."""


class UserError(Exception):
    """Something the user can fix, such as an argument, or a file that is missing or corrupt; the message says
    what was wrong, naming the argument or file, and what is expected."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (truncated, corrupt or not a checkpoint); the message names it."""
