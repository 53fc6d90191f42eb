"""Watch a model call its ODE solver, and answer the call with dise's solver.

dise never edits the user's classes. While one of its contexts is active (``intercept``), the solver
functions a model can reach are replaced by thin wrappers: torchdiffeq's ``odeint`` and
``odeint_adjoint`` (also where a module bound them with ``from torchdiffeq import odeint``, as
flow_matching's ``ODESolver`` and most user code do) and torchdyn's ``odeint`` (``NeuralODE`` calls
it). A wrapper hands each call, parsed into a ``SolveCall``, to the handler of the active context;
with no handler (another thread, or a solve nested inside the original solver or inside f) it
calls the original. The originals come back when the last context ends.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

SolveHandler = Callable[["SolveCall", Callable[..., Any]], Any]


@dataclass
class SolveCall:
    """One call of a solver as the model made it, normalised across libraries.

    ``site`` is where the call was made (file:line), ``func_path`` the model's module f is (or is a
    method of; '' for a closure), ``occurrence`` how many calls with the same site and f came before it
    in this forward, ``index`` its place among all calls of the forward: ``(site, func_path,
    occurrence)`` names the same solve in every forward of the model, however many solves the input
    makes elsewhere (Rubanova's ODE-RNN encoder solves once per observation, from the same line as
    the latent solve, with another f).
    """

    library: str                  # torchdiffeq | torchdyn | scipy (seen, never answered)
    entry: str                    # odeint | odeint_adjoint
    func: Callable[..., Any]      # f(t, y) as the library calls it
    y0: Any                       # a tensor or a tuple of tensors
    t: torch.Tensor               # the time grid as passed
    method: str
    rtol: Any
    atol: Any
    options: dict = field(default_factory=dict)
    unsupported: dict = field(default_factory=dict)   # arguments dise cannot honour (event_fn, save_at, ...)
    site: str = ""
    where: str = ""               # the innermost frame outside the solver libraries, for people
    index: int = 0
    occurrence: int = 0
    func_path: str | None = ""       # None: f is a module dise does not know (torch.export runs copies)
    site_occurrence: int = 0         # how many calls from the same site came before it, whatever their f

    @property
    def key(self) -> tuple[str, str | None, int, int]:
        return self.site, self.func_path, self.occurrence, self.site_occurrence

    def is_call(self, key: tuple[str, str | None, int, int]) -> bool:
        """Whether this is the call ``key`` names: the same site, f and occurrence; or, where f is a module
        dise cannot place (a copy torch.export traces), the same site and occurrence at that site."""
        if self.func_path is None:
            return (self.site, self.site_occurrence) == (key[0], key[3])
        return self.key[:3] == key[:3]

    def answer(self, ys: Any) -> Any:
        """What the library returns for this call, given the trajectory ``ys`` (a tensor ``[T, N, ...]``
        or a tuple of them, as the state is)."""
        return _LIBRARIES[self.library].answer(self, ys)


class _Torchdiffeq:
    name = "torchdiffeq"

    @staticmethod
    def originals() -> dict[str, Callable]:
        try:
            from torchdiffeq._impl.adjoint import odeint_adjoint
            from torchdiffeq._impl.odeint import odeint
        except ImportError:
            return {}
        found = {"odeint": odeint, "odeint_adjoint": odeint_adjoint}
        try:
            from torchdiffeq._impl.odeint import odeint_event
        except ImportError:
            return found
        return {**found, "odeint_event": odeint_event}

    @staticmethod
    def parse(entry: str, args: dict) -> SolveCall:
        if entry == "odeint_event":
            # ``odeint_event(func, y0, t0, *, event_fn, ...)``: the solve ends where event_fn finds it (its
            # inner odeint is bound as a default argument, out of dise's sight)
            extra = dict(args.get("kwargs") or {})
            return SolveCall(library="torchdiffeq", entry=entry, func=args["func"], y0=args["y0"],
                             t=torch.as_tensor(args["t0"]).reshape(-1), method=extra.get("method") or "dopri5",
                             rtol=extra.get("rtol", 1e-7), atol=extra.get("atol", 1e-9),
                             options=dict(extra.get("options") or {}), unsupported={"event_fn": args["event_fn"]})
        unsupported = {k: args[k] for k in ("event_fn",) if args.get(k) is not None}
        return SolveCall(library="torchdiffeq", entry=entry, func=args["func"], y0=args["y0"], t=args["t"],
                         method=args.get("method") or "dopri5", rtol=args.get("rtol", 1e-7),
                         atol=args.get("atol", 1e-9), options=dict(args.get("options") or {}),
                         unsupported=unsupported)

    @staticmethod
    def answer(call: SolveCall, ys: Any) -> Any:
        return ys


class _Torchdyn:
    name = "torchdyn"

    @staticmethod
    def originals() -> dict[str, Callable]:
        module = sys.modules.get("torchdyn.numerics.odeint")     # only when the model imported torchdyn
        fn = getattr(module, "odeint", None)
        return {"odeint": fn} if callable(fn) else {}

    @staticmethod
    def parse(entry: str, args: dict) -> SolveCall:
        t = args["t_span"]
        if isinstance(t, list):
            t = torch.cat([torch.as_tensor(v).reshape(-1) for v in t])
        from dise_cli.integrators.emulation import TORCHDYN_NAMES
        solver = args.get("solver")
        method = solver if isinstance(solver, str) else type(solver).__name__
        method = TORCHDYN_NAMES.get(method, method)
        unsupported = {name: args[name] for name in ("t_stops", "interpolator", "return_all_eval", "save_at", "args",
                                                     "seminorm") if not _unset(name, args.get(name))}
        return SolveCall(library="torchdyn", entry=entry, func=args["f"], y0=args["x"], t=t, method=str(method),
                         rtol=args.get("rtol", 1e-3), atol=args.get("atol", 1e-3), unsupported=unsupported)

    @staticmethod
    def answer(call: SolveCall, ys: Any) -> Any:
        t = call.t.to(ys.device)
        # torchdyn returns the times it integrated over: negated when it ran time backwards
        t_eval = -t if len(t) > 1 and bool(t[1] < t[0]) else t
        return t_eval, ys


class _Scipy:
    """scipy's ``solve_ivp`` (score_sde's and rectified flow's probability-flow samplers call it on a
    flattened numpy state). dise watches it only to say what it is: it cannot answer it per sample."""

    name = "scipy"

    @staticmethod
    def originals() -> dict[str, Callable]:
        module = sys.modules.get("scipy.integrate")           # only when the model imported it
        fn = getattr(module, "solve_ivp", None)
        return {"solve_ivp": fn} if callable(fn) else {}

    @staticmethod
    def parse(entry: str, args: dict) -> SolveCall:
        options = dict(args.get("options") or {})
        span = [float(v) for v in args["t_span"]]
        method = args.get("method", "RK45")
        return SolveCall(library="scipy", entry=entry, func=args["fun"], y0=args["y0"],
                         t=torch.tensor(span, dtype=torch.float64),
                         method=method if isinstance(method, str) else getattr(method, "__name__", str(method)),
                         rtol=options.get("rtol", 1e-3), atol=options.get("atol", 1e-6),
                         unsupported={"solve_ivp": "scipy"})

    @staticmethod
    def answer(call: SolveCall, ys: Any) -> Any:
        raise NotImplementedError("dise does not answer scipy's solve_ivp")


class CallNumbers:
    """Numbers the solver calls of one forward of ``root`` (see ``SolveCall``)."""

    def __init__(self, root: Any):
        self.paths = {id(m): name for name, m in root.named_modules()} if hasattr(root, "named_modules") else {}
        self.counts: dict[tuple[str, str | None], int] = {}
        self.index = 0

    def number(self, call: SolveCall) -> None:
        owner = call.func if isinstance(call.func, torch.nn.Module) else getattr(call.func, "__self__", None)
        if owner is None or not isinstance(owner, torch.nn.Module):
            call.func_path = ""                     # a closure or plain function: named by its site
        else:
            call.func_path = self.paths.get(id(owner))
        key = (call.site, call.func_path)
        call.occurrence = self.counts.get(key, 0)
        self.counts[key] = call.occurrence + 1
        call.site_occurrence = self.counts.get((call.site, "*"), 0)
        self.counts[(call.site, "*")] = call.site_occurrence + 1
        call.index, self.index = self.index, self.index + 1


def _unset(name: str, value: Any) -> bool:
    """A torchdyn argument left at its default (or empty), so dise can answer the call."""
    if value is None or value is False:
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 0
    if isinstance(value, (tuple, list, dict)) and not value:
        return True
    return name == "seminorm" and isinstance(value, (tuple, list)) and not value[0]


_LIBRARIES = {lib.name: lib for lib in (_Torchdiffeq, _Torchdyn, _Scipy)}
_LIBRARY_DIRS = tuple(os.sep + name + os.sep for name in ("torchdiffeq", "torchdyn", "torch", "dise_cli", "scipy"))


class _State(threading.local):
    def __init__(self):
        self.handlers: list[SolveHandler] = []
        self.depth = 0           # > 0 inside a solve: nested calls go to the original


_state = _State()
_lock = threading.Lock()
_users = 0
_locations: dict[tuple[int, str], tuple[dict, str, Callable]] = {}   # (id(namespace), name) -> the original there
_attributes: dict[tuple[int, str], tuple[dict, str, Callable]] = {}  # the same, in a model's modules' attributes
_wrappers: dict[int, Callable] = {}      # id(original) -> wrapper
_seen_modules = 0


def _wrapper(library: str, entry: str, original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _state.depth or not _state.handlers:
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        call = _LIBRARIES[library].parse(entry, dict(bound.arguments))
        call.site, call.where = _call_site(sys._getframe(1))
        handler = _state.handlers[-1]

        def run_original(func: Callable | None = None) -> Any:
            """The library's own solve of this call (with ``func`` in place of f if given)."""
            if func is not None:
                first = next(iter(bound.arguments))
                bound.arguments[first] = func
            return original(*bound.args, **bound.kwargs)

        _state.depth += 1
        try:
            return handler(call, run_original)
        finally:
            _state.depth -= 1

    # the library may read its own function's defaults through the name dise wrapped (torchdyn's odeint
    # compares its tolerances with ``odeint.__defaults__``): the wrapper carries them
    wrapper.__defaults__ = getattr(original, "__defaults__", None)
    wrapper.__kwdefaults__ = getattr(original, "__kwdefaults__", None)
    wrapper.__dise_original__ = original
    return wrapper


def _call_site(frame) -> tuple[str, str]:
    site = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    where = frame
    while where is not None and any(d in where.f_code.co_filename for d in _LIBRARY_DIRS):
        where = where.f_back
    where = where or frame
    return site, f"{os.path.basename(where.f_code.co_filename)}:{where.f_lineno} in {where.f_code.co_name}"


def _scan() -> None:
    """Find every module-level name that holds a solver function (a full pass over ``sys.modules``,
    repeated only when modules were imported since the last one)."""
    global _seen_modules
    targets: dict[int, Callable] = {}
    for lib in _LIBRARIES.values():
        for entry, original in lib.originals().items():
            targets[id(original)] = original
            if id(original) not in _wrappers:
                _wrappers[id(original)] = _wrapper(lib.name, entry, original)
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or namespace.get("__name__", "").startswith("dise_cli.solvecalls"):
            continue
        for name, value in list(namespace.items()):
            if id(value) in targets and targets[id(value)] is value:
                _locations[(id(namespace), name)] = (namespace, name, value)
    _seen_modules = len(sys.modules)


def _install(root: Any = None) -> None:
    """Put a wrapper wherever a module holds a solver function, and wherever a module of the model
    ``root`` keeps one as an attribute (torchdiffeq's bouncing ball: ``self.odeint = odeint``)
    (called with the lock held)."""
    if len(sys.modules) != _seen_modules:
        _scan()
    if root is not None and hasattr(root, "modules"):
        originals = {id(w.__dise_original__): w.__dise_original__ for w in _wrappers.values()}
        for module in root.modules():
            namespace = vars(module)
            for name, value in list(namespace.items()):
                if id(value) in originals and originals[id(value)] is value:
                    _attributes[(id(namespace), name)] = (namespace, name, value)
    for namespace, name, original in (*_locations.values(), *_attributes.values()):
        if namespace.get(name) is original:
            namespace[name] = _wrappers[id(original)]


def _uninstall() -> None:
    for namespace, name, original in (*_locations.values(), *_attributes.values()):
        if getattr(namespace.get(name), "__dise_original__", None) is original:
            namespace[name] = original
    _attributes.clear()                 # the model's modules: not kept alive here


@contextmanager
def intercept(handler: SolveHandler, root: Any = None) -> Iterator[None]:
    """Route every solver call made in this thread to ``handler(call, run_original)`` while the block
    runs (calls through the module-level names that hold a solver function, and through attributes of
    the modules of ``root`` that do). The handler returns what the solver should return:
    ``call.answer(ys)`` with dise's solution, or ``run_original()`` to let the library solve as written."""
    global _users
    with _lock:
        if _users == 0 or len(sys.modules) != _seen_modules or root is not None:
            _install(root)
        _users += 1
    _state.handlers.append(handler)
    try:
        yield
    finally:
        _state.handlers.pop()
        with _lock:
            _users -= 1
            if _users == 0:
                _uninstall()


@contextmanager
def outside_solves() -> Iterator[None]:
    """Run code that calls f (dise's own solves) as if inside a solve: nested solver calls inside f
    go to the original library."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
