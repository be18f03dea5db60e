"""The run folder, the unit of truth of a training run (both loops, QAT runs included).

What a folder guarantees, whatever happens to the process:

- one writer at a time: ``.lock`` holds the PID and host of the run writing the folder, under an
  OS file lock that ends with its process, so the lock of a killed run is recognised as stale and
  taken over;
- no silent replacement: a new run refuses a folder that holds a run unless ``overwrite`` (which
  first deletes that run's files); ``resume=PATH`` continues in the folder that holds PATH,
  wherever the command runs and wherever the folder has been moved or copied;
- files are written atomically (unique temporary names), in an order resume can check:
  ``checkpoint-last.pth``, the ``metrics.jsonl`` line, then the best files. Ctrl-C and SIGTERM wait
  until such a group is complete. After a kill between them, resume finds best files that do not
  hold the recorded best and rebuilds them (from ``checkpoint-best.pth`` when it is right, else from
  ``checkpoint-last.pth``, which then holds the best), and says so in one line;
- a full disk or another write failure is one line naming the file, and says how to continue;
- temporary files left by a killed writer are removed when the folder is next opened.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from torch import nn

from ..utils import Interrupted, UserError, param
from ..weights import CheckpointError, DiskFullError, WriteError, atomic_save, load_torch_file
from ..weights.files import TEMPORARY_NAME
from .checkpoint import BEST, LAST, locate_run
from .process import ProcessContext, all_agree

try:
    import fcntl
except ImportError:  # Windows: the lock file alone (no OS lock to tell a stale one)
    fcntl = None

__all__ = ["RunFolder", "RunFolderError", "BestFile", "locate_run", "prepare_run", "open_run_folder",
           "deferred_interrupts", "checkpoint_position", "best_files", "repair_best_files", "holds_run_of", "LOCK",
           "METRICS"]

log = logging.getLogger(__name__)

LOCK, METRICS, RECIPE = ".lock", "metrics.jsonl", "recipe.yaml"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class RunFolderError(UserError):
    """A run folder that cannot be used as asked (in use, or holding another run)."""


def prepare_run(recipe, keys: tuple[str, ...] = ()):
    """``(recipe, checkpoint to resume from)``: the recipe with ``output`` the run folder (the folder of
    the resumed checkpoint, see :func:`~repvit.train.checkpoint.locate_run`) and its local paths among
    ``keys`` made absolute, so that its recipe.yaml works from any directory (a moved folder is found
    from its checkpoint)."""
    folder, resume = locate_run(recipe.output, recipe.resume)
    folder = folder.resolve()
    if resume is not None and Path(recipe.output).resolve() != folder and os.environ.get("RANK", "0") == "0":
        log.warning("continuing the run in %s, the folder of %s (output %s is not used)", folder, resume,
                    recipe.output)
    changes = {"output": str(folder)}
    for key in keys:
        value = getattr(recipe, key)
        if value and "://" not in str(value) and Path(value).exists():
            changes[key] = str(Path(value).resolve())
    return dataclasses.replace(recipe, **changes), resume


class RunFolder:
    """One run's folder while a run writes it (see the module docstring)."""

    def __init__(self, path, command: str, products: tuple[str, ...] = ()):
        self.path = Path(path)
        self.command = command  # "repvit train", "repvit detect train", ...: for the hints
        self.products = products  # what the run writes besides checkpoints, metrics and recipe
        self.saved = ""  # what checkpoint-last.pth holds, e.g. "epoch 2 of 5" (for the interrupt message)
        self.writer = False  # whether this process opened the folder (the main process)
        self._lock_fd: int | None = None
        self._os_lock = False

    # ---- opening and closing
    def open(self, resume: Path | None, overwrite: bool, resume_asked: bool = False) -> RunFolder:
        """Lock the folder, remove temporaries of killed writers, and check it may be used as asked."""
        if overwrite and resume_asked:
            raise RunFolderError(f"{param('overwrite')} starts the run over and {param('resume')} continues it: "
                                 "give one of them")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._remove_temporaries()
            if resume is None:
                self._check_new(overwrite, resume_asked)
            else:
                self._check_resume(resume)
        except BaseException:
            self.close()
            raise
        self.writer = True
        return self

    def close(self) -> None:
        """Release the lock (the lock file is removed: a finished run leaves none). With an OS lock the
        file goes first, while still locked, so that no other process locks a file about to vanish."""
        if self._lock_fd is None:
            return
        if not self._os_lock:
            os.close(self._lock_fd)  # Windows cannot remove an open file
        with contextlib.suppress(OSError):
            (self.path / LOCK).unlink()
        if self._os_lock:
            os.close(self._lock_fd)
        self._lock_fd = None

    def _lock(self) -> None:
        path = self.path / LOCK
        try:
            fd, self._os_lock = _os_locked(path), True
        except _NoOSLock:  # Windows, or a file system without locks (Lustre without -o flock, ...)
            fd, self._os_lock = _created(path), False
        if fd is None:
            holder = _holder(path) or f"see {path}"
            raise RunFolderError(f"{param('output')} {self.path}: in use by another run ({holder}); wait for it to "
                                 f"finish, or choose another {param('output')}")
        previous = _holder(path)  # the OS lock was free: whoever wrote this has ended
        if previous:
            log.info("%s: took over the lock of a run that has ended (%s)", self.path, previous)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._lock_fd = fd

    def _remove_temporaries(self) -> None:
        for item in self.path.iterdir():
            if item.is_file() and (TEMPORARY_NAME.fullmatch(item.name) or item.name.endswith(".pth.tmp")):
                item.unlink(missing_ok=True)

    def _check_new(self, overwrite: bool, resume_asked: bool) -> None:
        found = [name for name in (LAST, BEST, METRICS) if _holds_data(self.path / name)]
        if found and overwrite:
            for name in (LAST, BEST, METRICS, RECIPE, *self.products):
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            log.info("%s: deleted the run it held (%s) to start over, as asked (overwrite)", self.path,
                     ", ".join(found))
        elif found and resume_asked:
            raise RunFolderError(f"{param('output')} {self.path}: holds a run ({', '.join(found)}) but no {LAST} to "
                                 f"continue from: resume one of its checkpoints with {param('resume')} FILE, or "
                                 f"replace the run with {param('overwrite')}")
        elif found:
            raise RunFolderError(f"{param('output')} {self.path}: holds a run already ({', '.join(found)}); continue "
                                 f"it with {param('resume')} auto, choose another {param('output')}, or replace it "
                                 f"with {param('overwrite')}")

    def _check_resume(self, resume: Path) -> None:
        """Resuming an older checkpoint than checkpoint-last.pth here would replace the later epochs."""
        last = self.path / LAST
        if resume.name == LAST or not last.is_file():
            return
        older, newer = _run_position(resume), _run_position(last)
        if older is not None and newer is not None and older < newer:
            raise RunFolderError(f"{param('resume')} {resume}: continuing this older checkpoint here would replace "
                                 f"the run's later checkpoint-last.pth ({newer} vs {older}); copy the folder and "
                                 "resume the copy's checkpoint instead")

    # ---- while running
    @contextlib.contextmanager
    def writing(self, saved: str):
        """A group of files written together, after which checkpoint-last.pth holds ``saved`` (e.g.
        "epoch 2 of 5"): Ctrl-C waits for its end, a write failure says how to go on."""
        with deferred_interrupts():
            try:
                yield
            except WriteError as err:
                step = "free some space, then " if isinstance(err, DiskFullError) else ""
                raise type(err)(f"{err.args[0]}; {step}continue with `{self.resume_command()}`") from None
            self.saved = saved

    def resume_command(self) -> str:
        return f"{self.command} --resume {self.path / LAST}"

    def interrupted(self, err: KeyboardInterrupt) -> Interrupted:
        signum = getattr(err, "signum", signal.SIGINT)
        what = _SIGNAL_NAMES.get(signum, f"signal {signum}")
        if not self.writer:
            return Interrupted(f"stopped by {what} (the main process of the run says how to resume)", signum)
        if self.saved:
            return Interrupted(f"stopped by {what}; {self.path} holds the run up to {self.saved}: continue with "
                               f"`{self.resume_command()}`", signum)
        return Interrupted(f"stopped by {what} before the first checkpoint: nothing to resume in {self.path}", signum)


@contextlib.contextmanager
def open_run_folder(recipe, resume: Path | None, command: str, products: tuple[str, ...], ctx: ProcessContext):
    """The folder of a run (a recipe from :func:`prepare_run`) for the time of the run: opened (and
    locked) by the main process, every process told whether that worked; SIGTERM stops the run like
    Ctrl-C; an interrupt becomes an :class:`~repvit.utils.Interrupted` that says how to resume."""
    path = recipe.output
    folder, problem = RunFolder(path, command, products), None
    if ctx.is_main:
        try:
            folder.open(resume, recipe.overwrite, recipe.resume is not None)
        except Exception as err:  # every process must hear of it, or the others wait in collectives
            problem = err
    if not all_agree(problem is None, ctx):
        raise problem or RunFolderError(f"{param('output')} {path}: the main process could not open it (its "
                                        "error says why)")
    try:  # SIGTERM: the writing process stops cleanly; the others keep the default (torchrun ends them)
        with _sigterm_interrupts() if ctx.is_main else contextlib.nullcontext():
            yield folder
    except KeyboardInterrupt as err:
        raise folder.interrupted(err) from None
    finally:
        folder.close()


@contextlib.contextmanager
def deferred_interrupts():
    """Ctrl-C and SIGTERM received inside the block take effect at its end (main thread only); a
    second one takes effect at once (a write hung on a network drive can still be stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def hold(signum, _frame):
        received.append(signum)
        if len(received) > 1:
            raise Interrupted("", signum)

    for s in _SIGNALS:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    if received:
        raise Interrupted("", received[0])


@contextlib.contextmanager
def _sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Interrupted("", signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# ---- the best files


@dataclass
class BestFile:
    """A file that holds the run's best model: what position (epoch or iteration) it holds, and how
    to write it from a run checkpoint's state."""

    name: str
    position: Callable[[Path], int | None]  # None: missing or unreadable
    write: Callable[[dict], object]


def checkpoint_position(key: str, offset: int = 0) -> Callable[[Path], int | None]:
    """Reads the position of a run checkpoint: ``state[key] + offset``."""
    def read(path: Path) -> int | None:
        try:
            return int(load_torch_file(path)[key]) + offset if path.is_file() else None
        except (CheckpointError, KeyError, TypeError):
            return None
    return read


def best_files(folder: Path, model: nn.Module, key: str, offset: int = 0,
               deployed: tuple[str, Callable[[nn.Module, dict], object]] | None = None,
               deployed_position: Callable[[Path], int | None] | None = None) -> list[BestFile]:
    """checkpoint-best.pth, whose position is ``state[key] + offset``, and, when given as ``(name,
    save(model, state))``, the deployed best, written from a copy of ``model`` holding a state's
    weights; ``deployed_position`` reads what it holds (default: as for checkpoint-best.pth)."""
    position = checkpoint_position(key, offset)
    files = [BestFile(BEST, position, lambda state: atomic_save(state, folder / BEST))]
    if deployed is not None:
        name, save = deployed

        def write(state: dict) -> None:
            holder = copy.deepcopy(model)
            holder.load_state_dict(state["state_dict"])
            save(holder, state)

        files.append(BestFile(name, deployed_position or position, write))
    return files


def repair_best_files(folder: Path, files: list[BestFile], best: int, last: dict, last_position: int,
                      unit: str) -> None:
    """Rebuild the best files that do not hold the recorded ``best`` position (a kill between the
    writes of checkpoint-last and the best files). ``files[0]`` is checkpoint-best.pth."""
    if best <= 0:
        return
    held = {f.name: f.position(folder / f.name) for f in files}
    stale = [f for f in files if held[f.name] != best]
    if not stale:
        return
    said = ", ".join(f"{f.name} held {f'{unit} {held[f.name]}' if held[f.name] else 'nothing'}" for f in stale)
    if held[files[0].name] == best:
        source, origin = load_torch_file(folder / files[0].name), files[0].name
    elif last_position == best:
        source, origin = last, LAST
    else:
        log.warning("%s: %s, but the run's best is %s %d, which no checkpoint holds any more; the next better %s "
                    "rewrites it", folder, said, unit, best, unit)
        return
    for f in stale:
        f.write(source)
    log.warning("%s: repaired: %s, the run's best is %s %d; rebuilt from %s", folder, said, unit, best, origin)


def holds_run_of(folder, **values) -> bool:
    """Whether ``folder``'s recipe.yaml says it holds a run with these recipe values (tools that
    regenerate their own folders replace only those)."""
    try:
        recipe = yaml.safe_load((Path(folder) / RECIPE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recipe, dict) and all(recipe.get(k) == v for k, v in values.items())


def _run_position(path: Path) -> int | None:
    """How far a run checkpoint is: its (1-based) epoch, or its iteration for the dense loop."""
    try:
        state = load_torch_file(path)
        return int(state["epoch"]) + 1 if "epoch" in state else int(state["iter"])
    except (CheckpointError, KeyError, TypeError):
        return None


def _holds_data(path: Path) -> bool:
    return path.is_file() and (path.name != METRICS or path.stat().st_size > 0)


class _NoOSLock(Exception):
    """This platform or file system has no OS file locks."""


def _os_locked(path: Path) -> int | None:
    """The open lock file, its OS lock held by this process; None when another process holds it."""
    if fcntl is None:
        raise _NoOSLock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise _NoOSLock from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)  # its previous holder removed the file meanwhile: lock the new one


def _created(path: Path) -> int | None:
    """Without OS locks (Windows): a new lock file, after removing one whose process has ended."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        info = json.loads(path.read_text() or "{}")
        if info.get("host") == socket.gethostname() and not _alive(int(info["pid"])):
            path.unlink()
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _holder(path: Path) -> str:
    """Who a lock file names, in words ("" for an empty or unreadable one)."""
    try:
        info = json.loads(path.read_text() or "{}")
        return f"PID {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
