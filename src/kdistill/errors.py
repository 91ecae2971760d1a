"""The one exception type for the user's mistakes, and the one line the CLI prints for a fault of the machine
(a full disk, a folder that cannot be written): the user fixes both, so neither ends in a traceback."""

from __future__ import annotations

import errno


class KdistillError(ValueError):
    """A problem with the user's input (config, data, model path) that the user can fix.

    The message is a sentence naming the file, line or field, what was expected, what was found,
    and how to fix it.
    """


# errno -> (what happened, what to do); the run's files are written atomically, so a retry finds no half file
_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free some space or point output_dir at a larger disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or point output_dir at another disk"),
    errno.EFBIG: ("the file is larger than this system lets a file be (a file-size limit, `ulimit -f`)",
                  "raise the limit or point output_dir at another file system"),
    errno.EACCES: ("permission denied", "make it writable (readable) for this user, or choose another output_dir"),
    errno.EPERM: ("operation not permitted", "make it writable for this user, or choose another output_dir"),
    errno.EROFS: ("the file system is read-only", "point output_dir at a writable disk"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "move that file away, or choose another path"),
    errno.EISDIR: ("this is a folder where a file was expected", "give the path of a file"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("a file already exists where a folder is needed", "move it away, or choose another path"),
    errno.EIO: ("an input/output error of the device", "check the disk"),
    errno.ENAMETOOLONG: ("the name is too long for this file system", "choose a shorter name"),
}


def describe_os_error(err: OSError) -> tuple[str, str]:
    """(the path and what happened, what to do) for a fault of the file system, e.g.
    ("runs/x/eval/results.json: no space left on the device", "free some space ...")."""
    cause, fix = _CAUSES.get(err.errno or -1, (err.strerror or str(err), "fix the cause"))
    where = err.filename if err.filename is not None else "a file"
    return f"{where}: {cause}", fix
