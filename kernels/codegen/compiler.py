"""Find the system C compiler, build a C source into a shared library, and cache it by content.

Generated kernels are plain C99 with GCC vector extensions, built with
``-O3 -march=native -fPIC -shared`` (``-fopenmp`` when more than one thread is asked for and the
compiler supports it). A library is stored under the SHA-256 of everything that decides its
machine code: the source, the flags, the compiler's version banner and the CPU (``-march=native``
code must not be loaded on another CPU model sharing the cache directory). Compilation writes a
temporary file and renames it into place, so concurrent processes never load a half-written
library; the loser of a race just overwrites an identical file.

The compiler is ``$CC`` when set (it may carry arguments, e.g. ``"ccache gcc"``), else the first
of ``cc``, ``gcc``, ``clang`` on ``PATH``. A set but broken ``$CC`` is an error, never silently
replaced, so what is measured is what was asked for. `compiler_available` answers without
raising, for targets that must report themselves unavailable instead of crashing a search.

Cache directory: the ``cache_dir`` argument, else ``$TRITUNE_KERNEL_CACHE``, else
``~/.cache/tritune/kernels``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Flags every kernel is built with (see the module docstring).
BASE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu99")
OPENMP_FLAG = "-fopenmp"
CANDIDATES = ("cc", "gcc", "clang")
ENV_CC = "CC"
ENV_CACHE = "TRITUNE_KERNEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/tritune/kernels")
#: Seconds a single compilation may take before it counts as failed.
COMPILE_TIMEOUT_S = 600

_lock = threading.Lock()
_stats = {"compiles": 0, "hits": 0}


class CompilerError(RuntimeError):
    """No usable C compiler, or a compilation failed (the message carries the command and its output)."""


@dataclass(frozen=True)
class Compiler:
    """A C compiler: its command (a list, ``$CC`` may hold arguments) and its version banner."""

    command: tuple[str, ...]
    version: str

    @property
    def name(self) -> str:
        return os.path.basename(self.command[-1])


@dataclass(frozen=True)
class Library:
    """A compiled shared library: where it is, its cache key, whether this call compiled it, and
    how long compiling took (0 on a cache hit)."""

    path: Path
    key: str
    compiled: bool
    compile_s: float
    openmp: bool


def _run(cmd: list[str], timeout: float, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=16)
def _probe(command: tuple[str, ...]) -> Compiler:
    exe = shutil.which(command[0])
    if exe is None:
        raise CompilerError(f"C compiler {' '.join(command)!r} not found on PATH")
    try:
        proc = _run([*command, "--version"], timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompilerError(f"C compiler {' '.join(command)!r} cannot be run: {exc}") from exc
    if proc.returncode != 0:
        raise CompilerError(f"C compiler {' '.join(command)!r} --version failed:\n{proc.stderr.strip()}")
    banner = (proc.stdout or proc.stderr).strip().splitlines()
    return Compiler(command=command, version=banner[0] if banner else "unknown")


def find_compiler(cc: str | None = None) -> Compiler:
    """The compiler to use: ``cc`` (a command line), else ``$CC``, else cc/gcc/clang on PATH.

    Raises `CompilerError` when the named compiler (or, unnamed, every candidate) is missing."""
    spec = cc if cc is not None else os.environ.get(ENV_CC) or None
    if spec is not None:
        command = tuple(shlex.split(spec))
        if not command:
            raise CompilerError(f"C compiler: empty command {spec!r} (from {'argument cc' if cc is not None else '$CC'})")
        return _probe(command)
    for name in CANDIDATES:
        if shutil.which(name):
            return _probe((name,))
    raise CompilerError(f"no C compiler found: set $CC or install one of {', '.join(CANDIDATES)}")


def compiler_available(cc: str | None = None) -> bool:
    """Whether `find_compiler` succeeds and the compiler builds a trivial shared library."""
    try:
        comp = find_compiler(cc)
        return _builds(comp.command, False)
    except CompilerError:
        return False


@functools.lru_cache(maxsize=32)
def _builds(command: tuple[str, ...], openmp: bool) -> bool:
    """Whether the compiler builds (and links) a tiny shared library with these flags."""
    src = "#include <omp.h>\nint tt_probe(void){return omp_get_max_threads();}\n" if openmp else "int tt_probe(void){return 1;}\n"
    with tempfile.TemporaryDirectory(prefix="tritune-cc-") as tmp:
        c, so = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe.so")
        Path(c).write_text(src)
        flags = [*BASE_FLAGS, OPENMP_FLAG] if openmp else list(BASE_FLAGS)
        try:
            proc = _run([*command, *flags, c, "-o", so], timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and os.path.exists(so)


def openmp_supported(cc: str | None = None) -> bool:
    """Whether the compiler can build OpenMP code (``-fopenmp`` and ``omp.h``)."""
    try:
        return _builds(find_compiler(cc).command, True)
    except CompilerError:
        return False


@functools.lru_cache(maxsize=1)
def cpu_signature() -> str:
    """CPU model and ISA flags: ``-march=native`` code is only valid on the CPU it was built for."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.strip()
                if model and flags:
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{flags}"


@functools.lru_cache(maxsize=16)
def _predefined(command: tuple[str, ...]) -> frozenset[str]:
    cmd = [*command, "-march=native", "-dM", "-E", "-x", "c", os.devnull]
    try:
        proc = _run(cmd, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompilerError(f"C compiler {' '.join(command)!r} cannot be run: {exc}") from exc
    if proc.returncode != 0:
        raise CompilerError(f"{shlex.join(cmd)} failed:\n{proc.stderr.strip()}")
    return frozenset(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("#define "))


def vector_width(cc: str | None = None) -> int:
    """float32 lanes of the widest SIMD register ``-march=native`` enables: 16 (AVX-512), 8 (AVX)
    or 4 (SSE, NEON and anything else: GCC vector extensions lower 16-byte vectors everywhere).
    The generator tiles pixels by this width."""
    macros = _predefined(find_compiler(cc).command)
    if "__AVX512F__" in macros:
        return 16
    if "__AVX__" in macros:
        return 8
    return 4


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The kernel cache directory (created): ``path``, else ``$TRITUNE_KERNEL_CACHE``, else ``~/.cache/tritune/kernels``."""
    chosen = Path(path) if path is not None else Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE)
    chosen = chosen.expanduser()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def stats() -> dict[str, int]:
    """Compilations and cache hits of `compile_library` in this process (a copy)."""
    with _lock:
        return dict(_stats)


def library_key(source: str, flags: tuple[str, ...], compiler: Compiler) -> str:
    h = hashlib.sha256()
    for part in (source, " ".join(flags), " ".join(compiler.command), compiler.version, cpu_signature()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def compile_library(source: str, *, openmp: bool = False, cache: str | os.PathLike | None = None,
                    cc: str | None = None, name: str = "kernel") -> Library:
    """Build ``source`` into a shared library in the cache (or reuse the cached one).

    ``openmp``: add ``-fopenmp`` (raises `CompilerError` if the compiler cannot; check
    `openmp_supported` first). The source is kept next to the library (``<key>.c``) so a failing
    or surprising kernel can be read. Raises `CompilerError` with the command and the compiler's
    output when compilation fails."""
    compiler = find_compiler(cc)
    flags = BASE_FLAGS + ((OPENMP_FLAG,) if openmp else ())
    key = library_key(source, flags, compiler)
    directory = cache_dir(cache)
    lib = directory / f"{name}-{key[:32]}.so"
    if lib.exists():
        with _lock:
            _stats["hits"] += 1
        return Library(lib, key, False, 0.0, openmp)
    src = directory / f"{name}-{key[:32]}.c"
    _atomic_write(src, source)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{lib.name}.", suffix=".tmp")
    os.close(fd)
    cmd = [*compiler.command, *flags, str(src), "-o", tmp, "-lm"]
    t0 = time.perf_counter()
    try:
        try:
            proc = _run(cmd, timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise CompilerError(f"compilation timed out after {COMPILE_TIMEOUT_S} s: {shlex.join(cmd)}") from exc
        except OSError as exc:
            raise CompilerError(f"cannot run the C compiler: {shlex.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()
            if len(output) > 4000:
                output = output[:2000] + "\n[...]\n" + output[-2000:]
            raise CompilerError(f"compilation failed (exit {proc.returncode}): {shlex.join(cmd)}\n{output}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    elapsed = time.perf_counter() - t0
    with _lock:
        _stats["compiles"] += 1
    return Library(lib, key, True, elapsed, openmp)
