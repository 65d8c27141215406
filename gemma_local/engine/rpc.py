"""llama.cpp's RPC backend: lend this machine to another one, or use other machines as devices.

No distribution layer of our own: ``ggml-rpc`` (built into llama-cpp-python with
``GGML_RPC=ON``) does the work. A *worker* runs ``ggml_backend_rpc_start_server`` over its
local devices; a *client* turns each worker into ggml devices (``ggml_backend_rpc_add_server``)
and registers them, after which llama.cpp's model loader treats them like local GPUs and
splits the layers over them (``tensor_split``).

Why in-process through ctypes rather than llama.cpp's ``rpc-server`` program: llama-cpp-python
does not build llama.cpp's tools, and shipping a second binary would be a second build to keep
in step with the first. Worker and client here load the *same* ``libggml-rpc`` as the engine,
so their protocol versions always match.

What ggml-rpc does on failure, and what we do about it (read from its source, v7 protocol):

- connecting to a worker that does not answer is a ``GGML_ABORT`` (the process would die with
  a backtrace), so :func:`probe` connects first and names the worker in one clear line;
- a worker that disappears while a model lives on it is also a ``GGML_ABORT``, raised on the
  connection's dispatcher thread while the engine waits in ``llama_decode``. ggml lets a
  program install an abort callback, called before ``abort()``; ours (:func:`watch_for_loss`)
  tells the listeners which worker went away and then parks the dispatcher thread for good,
  so the process does not abort. The engine thread stays blocked inside llama.cpp; the engine
  fails its requests with :class:`~gemma_local.errors.WorkerLostError` and never touches the
  model again. Nothing can resume: the weights on the lost worker are gone with it.
- a worker serves one client at a time (it accepts the next connection when the current one
  closes), so a worker busy with another gemma-local leaves a second one waiting.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gemma_local.errors import InvalidRequestError, RpcNotBuiltError, WorkerUnreachableError

__all__ = [
    "DEFAULT_PORT",
    "LocalDevice",
    "WorkerDevice",
    "add_workers",
    "local_devices",
    "model_devices",
    "parse_endpoints",
    "probe",
    "serve",
    "supported",
    "unwatch",
    "watch_for_loss",
]

logger = logging.getLogger("gemma_local.rpc")

DEFAULT_PORT = 50052
PROBE_TIMEOUT_S = 5.0


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _library(lib: Path, stem: str) -> Path | None:
    # The copy libllama links to (its soname, libggml.so.0) first: a wheel stores symlinks as
    # separate files, and a second copy of libggml would hold a second device registry.
    for name in (f"lib{stem}.so.0", f"lib{stem}.0.dylib", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (lib / name).exists():
            return lib / name
    return None


@cache
def _ggml() -> tuple[ctypes.CDLL, ctypes.CDLL, ctypes.CDLL]:
    """(ggml-base, ggml, ggml-rpc), loaded from llama-cpp-python's own build.

    Raises:
        RpcNotBuiltError: there is no ``libggml-rpc`` beside the engine's libraries.
    """
    import llama_cpp  # loads libllama and, with it, the ggml libraries we bind to

    del llama_cpp
    lib = _lib_dir()
    rpc_path = _library(lib, "ggml-rpc")
    if rpc_path is None:
        raise RpcNotBuiltError()
    base = ctypes.CDLL(str(_library(lib, "ggml-base")))
    ggml = ctypes.CDLL(str(_library(lib, "ggml")))
    rpc = ctypes.CDLL(str(rpc_path))
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    for fn, restype, argtypes in (
        (rpc.ggml_backend_rpc_add_server, p, [ctypes.c_char_p]),
        (rpc.ggml_backend_rpc_get_device_memory, None, [ctypes.c_char_p, ctypes.c_uint32, p, p]),
        (rpc.ggml_backend_rpc_start_server, None, [ctypes.c_char_p, ctypes.c_char_p, sz, sz, p]),
        (base.ggml_backend_reg_dev_count, sz, [p]),
        (base.ggml_backend_reg_dev_get, p, [p, sz]),
        (base.ggml_backend_dev_name, ctypes.c_char_p, [p]),
        (base.ggml_backend_dev_description, ctypes.c_char_p, [p]),
        (base.ggml_backend_dev_memory, None, [p, p, p]),
        (base.ggml_backend_dev_type, ctypes.c_int, [p]),
        (base.ggml_set_abort_callback, p, [p]),
        (ggml.ggml_backend_device_register, None, [p]),
        (ggml.ggml_backend_dev_count, sz, []),
        (ggml.ggml_backend_dev_get, p, [sz]),
    ):
        fn.restype, fn.argtypes = restype, argtypes
    return base, ggml, rpc


def supported() -> bool:
    """True when the installed llama.cpp has its RPC backend (``libggml-rpc`` with its API)."""
    try:
        _ggml()
    except (RpcNotBuiltError, OSError, AttributeError):
        return False
    return True


def require() -> None:
    """Raises :class:`RpcNotBuiltError`, with how to rebuild, when RPC is not built in."""
    if not supported():
        raise RpcNotBuiltError()


# --- endpoints -----------------------------------------------------------------------------


def parse_endpoints(text: str | None) -> tuple[str, ...]:
    """``"10.0.0.2:50052,10.0.0.3"`` → ``("10.0.0.2:50052", "10.0.0.3:50052")`` (default port added).

    Raises:
        InvalidRequestError: an entry is not HOST[:PORT] with a port in 1–65535.
    """
    if not text or not text.strip():
        return ()
    out: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = entry, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequestError(f"--rpc takes HOST:PORT[,HOST:PORT...]; {entry!r} is not one.", param="rpc")
        out.append(f"{host}:{int(port)}")
    if len(set(out)) != len(out):
        raise InvalidRequestError("--rpc names the same worker twice.", param="rpc")
    return tuple(out)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Connect to a worker and hang up, so an absent one is a clear error, not llama.cpp's abort.

    A worker accepts connections while it serves another client (they wait their turn), so
    this proves the worker runs, not that it is free.

    Raises:
        WorkerUnreachableError: refused, timed out, or the host does not resolve.
    """
    host, port = _split(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise WorkerUnreachableError(endpoint, f"no answer in {timeout:g}s") from None
    except OSError as e:
        raise WorkerUnreachableError(endpoint, e.strerror or str(e)) from None


# --- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerDevice:
    """One device a worker serves, as llama.cpp's loader will see it."""

    endpoint: str
    index: int
    name: str  # llama.cpp's device name, e.g. "RPC0" (its buffers are "RPC<index>[endpoint]")
    free: int
    total: int
    handle: int = 0  # the ggml device


@dataclass(frozen=True)
class LocalDevice:
    """A device of this machine that a worker can serve."""

    name: str
    description: str
    free: int
    total: int
    handle: int


def _memory(dev: int) -> tuple[int, int]:
    base, _, _ = _ggml()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


_registered: dict[str, tuple[WorkerDevice, ...]] = {}
_register_lock = threading.Lock()


def add_workers(endpoints: Sequence[str], *, timeout: float = PROBE_TIMEOUT_S) -> list[WorkerDevice]:
    """Make each worker's devices llama.cpp devices (once per process) and read their free memory.

    ggml keeps one registry per process, so a worker's devices are registered once and the
    next model loaded in this process uses them as well.

    Raises:
        RpcNotBuiltError: llama.cpp has no RPC backend.
        WorkerUnreachableError: a worker does not answer (the first such, by name).
    """
    require()
    base, ggml, rpc = _ggml()
    for endpoint in endpoints:
        probe(endpoint, timeout)
    devices: list[WorkerDevice] = []
    with _register_lock:
        for endpoint in endpoints:
            if endpoint not in _registered:
                reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
                if not reg:
                    raise WorkerUnreachableError(endpoint, "it serves no device")
                found = []
                for i in range(base.ggml_backend_reg_dev_count(reg)):
                    dev = base.ggml_backend_reg_dev_get(reg, i)
                    ggml.ggml_backend_device_register(dev)
                    name = base.ggml_backend_dev_name(dev).decode()
                    found.append(WorkerDevice(endpoint, i, name, 0, 0, dev))
                _registered[endpoint] = tuple(found)
            for d in _registered[endpoint]:
                free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
                rpc.ggml_backend_rpc_get_device_memory(
                    endpoint.encode(), d.index, ctypes.byref(free), ctypes.byref(total)
                )
                devices.append(WorkerDevice(d.endpoint, d.index, d.name, free.value, total.value, d.handle))
    return devices


_DEVICE_TYPE_NAMES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def model_devices(endpoints: Sequence[str]) -> ctypes.Array | None:
    """The devices a model is to use (``llama_model_params.devices``), or None for llama.cpp's choice.

    ggml cannot forget a registered device, and llama.cpp's default is *every* registered
    device: once a worker was added in this process, a model that does not name it (or names
    other workers) must list its devices itself, or llama.cpp would reach for every worker
    ever added, gone or not. Order as llama.cpp's own: the workers', then local GPUs (else
    integrated GPUs).
    """
    with _register_lock:
        if not _registered:
            return None
        handles = [d.handle for endpoint in endpoints for d in _registered.get(endpoint, ())]
    base, ggml, _ = _ggml()
    gpus, igpus = [], []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        kind = _DEVICE_TYPE_NAMES.get(base.ggml_backend_dev_type(dev))
        if base.ggml_backend_dev_name(dev).startswith(b"RPC"):
            continue
        if kind == "gpu":
            gpus.append(dev)
        elif kind == "igpu":
            igpus.append(dev)
    handles += gpus or igpus
    return (ctypes.c_void_p * (len(handles) + 1))(*handles, None)


def local_devices() -> list[LocalDevice]:
    """This machine's devices that can hold layers (CPU and GPUs; RPC devices excluded)."""
    base, ggml, _ = _ggml()
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        name = base.ggml_backend_dev_name(dev).decode()
        if name.startswith("RPC") or _DEVICE_TYPE_NAMES.get(base.ggml_backend_dev_type(dev)) == "accel":
            continue
        free, total = _memory(dev)
        out.append(LocalDevice(name, base.ggml_backend_dev_description(dev).decode(), free, total, dev))
    return out


def find_device(spec: str) -> LocalDevice:
    """The local device ``spec`` names: ``cpu``, ``cuda:0``/``CUDA0``, ``vulkan:1``, ``metal``…

    Raises:
        InvalidRequestError: no such device (the message lists those there are).
    """
    devices = local_devices()
    wanted = spec.replace(":", "").replace("-", "").lower()
    for d in devices:
        if d.name.lower() == wanted or d.name.lower().rstrip("0") == wanted:
            return d
    names = ", ".join(d.name.lower() for d in devices)
    raise InvalidRequestError(f"No device {spec!r} on this machine; it has: {names}.", param="device")


# --- serving (the worker side) ------------------------------------------------------------


def serve(endpoint: str, devices: Sequence[LocalDevice], *, threads: int, cache_dir: Path | None) -> None:
    """Serve ``devices`` on ``endpoint`` until the process ends (ggml's server loop never returns).

    ``cache_dir`` lets a client send a tensor's hash instead of its bytes when this worker
    already has it (a model's weights on a reconnect: much faster over a slow network).
    """
    require()
    _, _, rpc = _ggml()
    array = (ctypes.c_void_p * len(devices))(*(d.handle for d in devices))
    cache = str(cache_dir).encode() if cache_dir else None
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), cache, threads, len(devices), array)


# --- a worker lost under a loaded model --------------------------------------------------------

LossListener = Callable[[str | None, str], None]
_listeners: list[LossListener] = []
_endpoints_in_use: list[str] = []
_abort_callback: ctypes._CFuncPtr | None = None  # kept alive: ggml holds only the pointer
# ggml's own failure texts for a connection: the only information its abort carries.
_RPC_FAILURES = ("RPC server crashed", "Failed to connect to", "RPC handshake failed")


def watch_for_loss(endpoints: Sequence[str], listener: LossListener) -> None:
    """Call ``listener(endpoint, message)`` instead of aborting when a worker is lost.

    ``endpoint`` is the worker that no longer accepts connections (``None`` when every
    worker still does: then the message is all there is). The listener runs on ggml's
    dispatcher thread, which then never returns (see the module docstring).
    """
    global _abort_callback
    base, _, _ = _ggml()
    _endpoints_in_use[:] = list(dict.fromkeys([*_endpoints_in_use, *endpoints]))
    _listeners.append(listener)
    if _abort_callback is None:
        _abort_callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_on_abort)
        base.ggml_set_abort_callback(ctypes.cast(_abort_callback, ctypes.c_void_p))


def unwatch(listener: LossListener) -> None:
    """Stop calling ``listener`` (its engine is closed)."""
    if listener in _listeners:
        _listeners.remove(listener)


def _lost_endpoint(within_s: float = 3.0) -> str | None:
    # The dead worker's port refuses connections, but not always at the very moment its
    # connection dropped (the kernel tears a process down in steps): ask a few times.
    deadline = time.monotonic() + within_s
    while True:
        for endpoint in _endpoints_in_use:
            try:
                with socket.create_connection(_split(endpoint), timeout=1.0):
                    pass
            except TimeoutError:
                continue  # a live worker busy with us may leave a probe waiting: not proof of loss
            except OSError:  # refused, or the host is gone
                return endpoint
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _on_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    sys.stderr.write(f"llama.cpp: {text}\n")
    sys.stderr.flush()
    if not any(f in text for f in _RPC_FAILURES) or not _listeners:
        return  # not a lost worker: ggml aborts the process, as it would have anyway
    endpoint = _lost_endpoint()
    for listener in list(_listeners):
        try:
            listener(endpoint, text)
        except Exception:  # a listener's bug must not turn into an abort after all
            logger.exception("worker-loss listener failed")
    threading.Event().wait()  # park this thread for good: returning would abort()
