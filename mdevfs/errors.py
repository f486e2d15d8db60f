"""Two error models, one for each audience.

* The kernel's: every refusal of a sysfs operation is an ``OSError`` carrying the errno
  the kernel returns (:func:`fail`); the FUSE adapter hands it to the caller unchanged.
* The user's: every problem a command reports is an :class:`MdevfsError` whose class
  says what kind it is and carries the command's exit status; ``cli.main`` catches the
  family once, prints ``mdevfs: <message>`` and exits with that status. Every class lives
  here, so that a starter that imported nothing else knows the one a daemon reports.

=====================  ======  ====================================================
class                  status  meaning
=====================  ======  ====================================================
``ControlRefused``     1       the daemon refused a ``mdevfs ctl`` command
``UsageError``         2       bad input: arguments, a mountpoint, a file
``TopologyError``      2       a topology file cannot be used
``StateError``         2       a state file cannot be used
``StateInUse``         2       another daemon holds the state file
``MountError``         3       the daemon did not come up, or does not answer
``MountNotPermitted``  4       this process may not mount FUSE here
``NamespaceError``     125     ``mdevfs run`` cannot set up its namespace
=====================  ======  ====================================================
"""
from __future__ import annotations

import os
from typing import NoReturn


def fail(errno: int, detail: str | None = None) -> NoReturn:
    """Raise OSError(errno); the FUSE adapter hands the errno to the caller unchanged."""
    raise OSError(errno, detail or os.strerror(errno))


class MdevfsError(Exception):
    """A clear, final message for the user; ``exit_status`` is the command's and
    ``prefix`` starts the line that ``cli.main`` prints."""

    exit_status = 1
    prefix = "mdevfs"


class ControlRefused(MdevfsError):
    """The daemon refused a control command (``mdevfs ctl`` exits 1)."""

    exit_status = 1


class UsageError(MdevfsError):
    """Bad input: an argument, a mountpoint, a file (exit status 2)."""

    exit_status = 2


class TopologyError(UsageError):
    """The topology cannot be used; the message names the file, the entry and the problem."""


class StateError(UsageError):
    """The state file cannot be used; the message names the file, the device and the problem."""


class StateInUse(StateError):
    """Another mdevfs daemon holds the state file."""


class MountError(MdevfsError, RuntimeError):
    """The daemon did not come up or does not answer (exit status 3). A RuntimeError
    too, as :func:`mdevfs.testing.mounted` raised before this family existed."""

    exit_status = 3


class MountNotPermitted(MountError):
    """Mounting FUSE is not permitted here, e.g. a container without CAP_SYS_ADMIN."""

    exit_status = 4


class NamespaceError(MdevfsError):
    """``mdevfs run`` cannot work here; the message says what is needed (exit 125, as
    env(1) and chroot(1) say that the command did not run)."""

    exit_status = 125
    prefix = "mdevfs run"


def by_name(name: str) -> type[MdevfsError]:
    """The class of the family called ``name`` (a daemon reports its error by name over
    its readiness socket), or :class:`MountError` for a name it does not know."""
    todo: list[type[MdevfsError]] = [MdevfsError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return MountError
