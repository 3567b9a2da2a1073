"""A class-data archive of the driver JVM, so that a Spark session starts faster.

A local Spark driver loads some 20,000 classes from Spark's jars before it
runs its first query, and every run starts a new JVM. Java's dynamic
class-data sharing (AppCDS) keeps those classes, parsed and verified, in one
archive file that later JVMs map into memory instead of loading the classes
again. The second run that finds no archive starts its JVM with the option
to write one at exit (the first only leaves a marker, see
:meth:`ClassArchive.java_options`). Later runs with the same Java and the
same Spark jars read it.

The archive belongs to one Java build, one class path and one set of JVM
options, so its file name contains a hash of them. A JVM that cannot use an
archive runs without it. The archive is then removed, and the next run
writes a new one.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from pyspark import SparkContext

if TYPE_CHECKING:
    from .config import Config

__all__ = ["ClassArchive", "archive_folder", "default_archive_folder"]

logger = logging.getLogger(__name__)

# Archives kept per folder: one per Java and Spark installation in use.
_KEEP_ARCHIVES = 3
# An unfinished archive older than this was left by a process that was killed.
_STALE_PARTIAL_S = 3600.0
# The JVM's class-data log contains "Unable to use shared archive" for an archive of another
# class path and "Unable to map shared spaces" for a file that is not an archive.
_UNUSABLE = "Unable to "
# Options that already choose an archive. The user's choice wins.
_USER_CDS_OPTIONS = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare")
# Turns off the JVM's class-data messages on standard output, where writing an archive
# prints thousands of lines about classes it cannot archive.
_QUIET = "-Xlog:cds=off,cds+dynamic=off"


def default_archive_folder() -> Path:
    """Return ``$XDG_CACHE_HOME/anomaly-spark/jvm``, or ``~/.cache/anomaly-spark/jvm`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anomaly-spark" / "jvm"


def archive_folder(config: Config) -> Path | None:
    """Return the archive folder that ``spark.class_archive`` and ``spark.class_archive_dir`` choose, or None when it is off."""
    if not config.get("spark.class_archive"):
        return None
    folder = config.get("spark.class_archive_dir")
    return Path(folder).expanduser() if folder else default_archive_folder()


class ClassArchive:
    """Driver JVM options that read or write a class-data archive, and the work after start and exit.

    Parameters
    ----------
    folder : Path
        Where the archives are kept; created when missing.
    conf : mapping
        The Spark settings the session starts with. The driver's extra class
        path and JVM options take part in the archive's name.
    """

    def __init__(self, folder: Path, conf: Mapping[str, str]) -> None:
        self.folder = Path(folder).expanduser()
        self.path = self.folder / f"spark-{_class_path_key(conf)}.jsa"
        self._partial: Path | None = None
        self._log: Path | None = None

    def java_options(self) -> str | None:
        """Return the JVM options to add to ``spark.driver.extraJavaOptions``, or None to add none.

        With an archive in place the JVM reads it and writes its class-data
        messages to a log file, which :meth:`after_start` reads. Without one,
        the first run only leaves a marker file, so that a container or CI
        job whose folder is discarded after one run does not spend seconds
        writing an archive that no later run reads. A later run that finds the marker
        has the JVM write the archive under a name of this process when it
        exits, and :meth:`after_start` arranges for the exit to be awaited.
        """
        if self.path.is_file() and os.access(self.path, os.R_OK):
            self._log = Path(tempfile.gettempdir()) / f"anomaly-spark-{self.path.stem}.{os.getpid()}.log"
            return " ".join([_QUIET, _option(f"-XX:SharedArchiveFile={self.path}"), _option(f"-Xlog:cds=info,cds+dynamic=info:file={self._log}")])
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("JVM class archive not used: cannot create %s (%s)", self.folder, exc.strerror)
            return None
        if not os.access(self.folder, os.W_OK):
            logger.warning("JVM class archive not used: %s is not writable", self.folder)
            return None
        marker = self.path.with_suffix(".seen")
        if not marker.exists():
            marker.touch()
            return None
        self._remove_stale_partials()
        self._partial = self.folder / f"{self.path.name}.{os.getpid()}.partial"
        return " ".join([_QUIET, _option(f"-XX:ArchiveClassesAtExit={self._partial}")])

    def after_start(self) -> None:
        """Check that the new JVM used the archive, or arrange for the new archive to be kept at exit."""
        if self._log is not None:
            text = _read_text(self._log)
            self._log.unlink(missing_ok=True)
            if _UNUSABLE in text:
                self.path.unlink(missing_ok=True)
                logger.info("the JVM could not use its class archive %s, so it was removed. The next run writes a new one.", self.path)
        if self._partial is not None:
            atexit.register(self._finish_writing)

    def _finish_writing(self) -> None:
        """Stop Spark, wait for the JVM to write the archive as it exits, and move the archive in place."""
        partial = self._partial
        assert partial is not None
        gateway = SparkContext._gateway
        process = getattr(gateway, "proc", None)
        if process is None:
            return
        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        logger.info("writing the JVM class archive %s for a faster start of later runs (once)", self.path)
        started = time.perf_counter()
        try:
            # The gateway JVM exits when its standard input closes, and writes the archive as it exits.
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=300)
        except Exception as exc:  # noqa: BLE001 - a missing archive only costs start-up time
            logger.warning("JVM class archive not written: %s", exc)
            partial.unlink(missing_ok=True)
            return
        if process.returncode == 0 and partial.is_file() and partial.stat().st_size > 0:
            os.replace(partial, self.path)
            self._keep_newest()
            logger.info("JVM class archive written in %.1f s (%d MB)", time.perf_counter() - started, self.path.stat().st_size // 2**20)
        else:
            partial.unlink(missing_ok=True)
            logger.warning("JVM class archive not written: the JVM exited with code %s", process.returncode)

    def _remove_stale_partials(self) -> None:
        for path in self.folder.glob("spark-*.partial"):
            try:
                if time.time() - path.stat().st_mtime > _STALE_PARTIAL_S:
                    path.unlink()
            except OSError:
                pass

    def _keep_newest(self) -> None:
        archives = sorted(self.folder.glob("spark-*.jsa"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in archives[_KEEP_ARCHIVES:]:
            path.unlink(missing_ok=True)
            path.with_suffix(".seen").unlink(missing_ok=True)


def user_chose_archive(java_options: str) -> bool:
    """Return True when ``java_options`` already select or turn off class-data sharing."""
    return any(option in java_options for option in _USER_CDS_OPTIONS)


def _class_path_key(conf: Mapping[str, str]) -> str:
    """Hash the Java build, the driver's class path and the user's driver JVM options into 16 hex digits."""
    digest = hashlib.sha256()
    java = _java_executable()
    parts = [str(java)]
    if java is not None:
        stat = java.stat()
        parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    # The JVM checks the class path by its absolute paths, so two installations of the same Spark differ.
    jars = _spark_home().resolve() / "jars"
    parts.append(str(jars))
    if jars.is_dir():
        parts += sorted(f"{p.name}:{p.stat().st_size}" for p in jars.iterdir())
    parts.append(str(conf.get("spark.driver.extraClassPath", "")))
    # Options such as the garbage collector or compressed pointers decide whether the JVM accepts an archive.
    parts.append(str(conf.get("spark.driver.extraJavaOptions", "")))
    digest.update("\n".join(parts).encode())
    return digest.hexdigest()[:16]


def _java_executable() -> Path | None:
    """Return the ``java`` that spark-submit starts: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def _spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def _option(text: str) -> str:
    """Quote one JVM option that contains a space, for Spark's splitting of ``extraJavaOptions``."""
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
