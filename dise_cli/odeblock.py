"""Find an ODE block by its attributes, for models whose solve dise cannot see (a hand-written
solver loop instead of torchdiffeq or torchdyn).

A block is a submodule that holds an ODE function f(t, h) (attribute ``odefunc`` as in
torchdiffeq's examples, ``func``, ``f`` or ``vf`` as in torchdyn, or failing those its only child
whose forward takes (t, h)) and usually a time span (``integration_time``, ``t_span``, ``t``).
dise replaces the block's whole forward by its own solve of the block's input while it runs.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from dise_cli.conditioning import Call, CallShape, Conditioned, first_calls, passes_conditioning, row_tensors
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.integrators.vector_field import TIME_NAMES, VectorField, detect_arg_order
from dise_cli.inputs import InputJoin
from dise_cli.loopform import LoopForm, loop_func
from dise_cli.odemodel import AttributeModel, output_note, pick_output
from dise_cli.rowcontext import RowContext, resolve
from dise_cli.states import StateLayout

FUNC_ATTRS = ("odefunc", "func", "f", "vf")
TIME_ATTRS = ("integration_time", "t_span", "t", "ts", "times", "t_eval")
TIME_ARG_NAMES = ("t", "time", "s", "tau")
DEFAULT_T_SPAN = (0.0, 1.0)
DEFAULT_SOURCE = "default [0, 1]"
MAX_CALLS_READ = 1024       # the calls of f a reading of a hand-written loop keeps


def required_args(module: nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def is_vector_field(module: nn.Module) -> bool:
    """True if ``module.forward`` takes (t, h) (or (h, t)): two required positional arguments."""
    return len(required_args(module)) >= 2


def _takes_time_first(module: nn.Module) -> bool:
    """``forward(t, h)`` rather than, say, a wrapper's ``forward(y0, t)``: the first name says time."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in TIME_ARG_NAMES


def _func_of(module: nn.Module, by_name_only: bool) -> str | None:
    """The attribute under which ``module`` holds an ODE function, if it is a block."""
    for name in FUNC_ATTRS:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    if by_name_only:
        return None
    fields = [name for name, child in module.named_children() if is_vector_field(child)]
    if not fields:
        # a network whose time is a keyword with a default (diffusers' transformer(hidden_states, ...,
        # timestep=None), a pipeline's loop calls by keyword)
        fields = [name for name, child in module.named_children() if _takes_a_time(child)]
    return fields[0] if len(fields) == 1 else None


def _takes_a_time(module: nn.Module) -> bool:
    """``forward`` takes a state and, among its other parameters, one named as a time."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return len(named) >= 2 and any(n in TIME_NAMES for n in named[1:])


def find_blocks(model: nn.Module) -> list[tuple[str, str]]:
    """All (block path, function attribute) pairs, outermost only; named attributes first."""
    for by_name_only in (True, False):
        found = []
        for path, module in model.named_modules():
            if is_vector_field(module) and (path or _takes_time_first(module)):
                continue          # an ODE function (or a layer inside one) is not a block
            attr = _func_of(module, by_name_only)
            if attr is None:
                continue
            inside = any(path == f"{p}.{a}".lstrip(".") or path.startswith(f"{p}.{a}.".lstrip("."))
                         for p, a in found)
            if not inside:
                found.append((path, attr))
        if found:
            return found
    return []


def time_attr(block: nn.Module) -> tuple[torch.Tensor, str] | None:
    for name in TIME_ATTRS:
        value = getattr(block, name, None)
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            try:
                value = torch.tensor(value, dtype=torch.float64)
            except (TypeError, ValueError):
                continue
        if isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) >= 2 and value.is_floating_point():
            return value.detach().to("cpu", torch.float64), f"attribute {name}"
    return None


def named_block(module: nn.Module, name: str) -> tuple[str, str]:
    path = "" if name in ("", ".") else name
    try:
        target = module.get_submodule(path)
    except AttributeError:
        names = ", ".join(n for n, _ in module.named_modules() if n) or "none"
        raise UsageError(f"--ode-block: the model has no submodule '{name}'; submodules: {names[:300]}") from None
    attr = _func_of(target, by_name_only=False)
    if attr is not None:
        return path, attr
    if path and is_vector_field(target):      # the user named f itself: its parent is the block
        parent, _, leaf = path.rpartition(".")
        return parent, leaf
    raise UsageError(f"--ode-block: '{name}' holds no ODE function (attribute {', '.join(FUNC_ATTRS)} or a "
                     f"child whose forward takes (t, h))")


def sequential_kind(module: nn.Module, path: str) -> bool:
    """The block at ``path`` sits in ``nn.Sequential`` containers all the way up."""
    if not path:
        return False
    parent = module
    for part in path.split("."):
        if not isinstance(parent, nn.Sequential):
            return False
        parent = parent.get_submodule(part)
    return True


def sequential_split(module: nn.Module, path: str) -> tuple[nn.Sequential, nn.Sequential]:
    """The layers before and after the block at ``path`` in its ``nn.Sequential`` containers."""
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    parent = module
    for part in path.split("."):
        names = [n for n, _ in parent.named_children()]
        i = names.index(part)
        children = list(parent.children())
        before.extend(children[:i])
        after[:0] = children[i + 1:]
        parent = children[i]
    return nn.Sequential(*before), nn.Sequential(*after)


def read_by_attributes(module: nn.Module, x: torch.Tensor, t_span: torch.Tensor | None, data_t: torch.Tensor | None,
                       ode_block: str | None, model_name: str, model_args: tuple,
                       output_key: str | None = None, time_scale: float | None = None,
                       loop_form: LoopForm | None = None, join: InputJoin | None = None,
                       more_args: tuple | None = None) -> AttributeModel:
    """Locate the block by its attributes (``ode_block`` overrides), run the model once to learn its
    input and output, and choose how to pass per-row times to f (``time_scale``: f called at that many
    times the time the block's loop steps on, ``TimeScaled``; ``loop_form``: the loop's f is a denoiser,
    its start and last step, ``dise_cli.loopform``). Where the loop passes f conditioning beyond a time
    and a state (class labels), f is read as ``Conditioned`` (``dise_cli.conditioning``); ``more_args``:
    the model's arguments for one more row, which tell a per-sample argument from a fixed one."""
    if ode_block is not None:
        path, attr = named_block(module, ode_block)
    else:
        blocks = find_blocks(module)
        if len(blocks) > 1:
            names = ", ".join(p or "(the model itself)" for p, _ in blocks)
            raise InputError(f"several ODE blocks found in {model_name}: {names}; choose one with --ode-block")
        if not blocks:
            raise InputError(f"no ODE block found in {model_name}: the model calls no torchdiffeq or torchdyn solver, "
                             f"no submodule holds an ODE function (attribute {', '.join(FUNC_ATTRS)}) and the model "
                             f"is not f(t, h) itself; name the block with --ode-block")
        path, attr = blocks[0]
    block = module.get_submodule(path) if path else module
    if isinstance(block, torch.jit.ScriptModule):
        raise InputError(f"the ODE block '{path or '(the model itself)'}' of {model_name} is a TorchScript module "
                         f"(torch.jit.script), whose forward dise can neither watch nor replace; let --arch build the "
                         f"model without scripting the block (its weights load the same)")
    grid, grid_source = _grid(block, t_span, data_t)
    kind = "root" if not path else ("sequential" if sequential_kind(module, path) else "nested")
    func = getattr(block, attr)
    seen: dict[str, Any] = {}
    calls: list[Call] = []
    outputs: list[Any] = []
    snapshots: list[tuple] = []     # (call, argument, tensor, its version, a copy) of the calls compared

    def hook(_mod, args, kwargs, output):
        if "h0" not in seen:
            seen["h0"] = args[0] if args else next(iter(kwargs.values()))
            seen["out"] = output

    def watch(_mod, args, kwargs):
        seen["calls"] = seen.get("calls", 0) + 1
        if len(calls) < MAX_CALLS_READ:        # all of a loop's: guidance on some calls only shows late
            doubled = any(_rows_of(a) == 2 * len(x) for a in (*args, *kwargs.values()))
            seen["doubled calls"] = seen.get("doubled calls", 0) + doubled
            # the calls as they were handed: a loop that steps its state in place (x += dt * v) changes the
            # tensor f was handed after the call. The first calls and the first doubled ones are copied and
            # the copy kept where the tensor changed; once a tensor comes back changed, every call is copied
            tensors = [(key, v) for key, v in [*enumerate(args), *kwargs.items()] if isinstance(v, torch.Tensor)]
            if any(t is v and t._version != version for t, version in seen.get("handed", ()) for _, v in tensors):
                seen["in place"] = True
            seen["handed"] = [(v, v._version) for _, v in tensors]
            # the calls the reading compares, with their outputs: the first ones, and the first doubled ones
            # (a guided call where the loop guides on some calls only); the others' outputs are not kept
            seen["compared"] = len(calls) < 3 or (doubled and seen["doubled calls"] <= 4)
            if seen.get("in place"):
                args = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
                kwargs = {k: a.detach().clone() if isinstance(a, torch.Tensor) else a for k, a in kwargs.items()}
            elif seen["compared"]:
                snapshots.extend((len(calls), key, v, v._version, v.detach().clone()) for key, v in tensors)
            calls.append((tuple(args), dict(kwargs)))

    def answered(_mod, _args, output):
        if len(outputs) < len(calls):
            outputs.append(output if seen["compared"] else None)

    handles = [block.register_forward_hook(hook, with_kwargs=True)]
    if isinstance(func, nn.Module):
        handles += [func.register_forward_pre_hook(watch, with_kwargs=True), func.register_forward_hook(answered)]
    try:
        out = module(*model_args)
    finally:
        for handle in handles:
            handle.remove()
    for i, key, tensor, version, copy in snapshots:
        if tensor._version != version:         # changed in place since: the value the call was handed
            args, kwargs = calls[i]
            calls[i] = (tuple(copy if k == key else a for k, a in enumerate(args)),
                        {k: copy if k == key else a for k, a in kwargs.items()})
    if "h0" not in seen:
        raise InputError(f"the model's forward never called its ODE block '{path or '(the model itself)'}' "
                         f"({type(block).__name__}) through the block's forward: where its loop runs in another method "
                         f"(a sample() the model calls), dise cannot take the loop's start; run the loop in the "
                         f"block's forward, name another block with --ode-block, or write the loop with "
                         f"torchdiffeq's odeint")
    inner = find_blocks(func) if ode_block is None and seen.get("calls") == 1 else []
    if len(inner) == 1 and _calls_of(module, func, *inner[0], model_args) > 1:
        # f called once is no loop's f but a block of its own (a sampler the model hands an embedding),
        # whose loop calls its f
        again = f"{path}.{attr}.{inner[0][0]}".strip(".")
        return read_by_attributes(module, x, t_span, data_t, again, model_name, model_args, output_key, time_scale,
                                  loop_form, join, more_args)
    h0 = seen["h0"]
    n = len(x)
    if not isinstance(h0, torch.Tensor) or h0.ndim < 1 or len(h0) != n:
        raise InputError(f"the ODE block's input is not a batch of states (got {type(h0).__name__})")
    layout = StateLayout.of(h0, "the ODE block's input")
    what = (f"dise sees no solver call in {model_name} (a hand-written solver loop, or a solver other than "
            f"torchdiffeq's and torchdyn's) and read block '{path or '(the model itself)'}' by its attributes, but")
    hint = "name the block with --ode-block, or its solver with --candidates and its grid with --t-span"
    shape = None
    if isinstance(func, nn.Module) and (len(required_args(func)) > 2 or (calls and passes_conditioning(calls[0]))
                                        or (outputs and not isinstance(outputs[0], torch.Tensor))):
        # the loop hands f its conditioning (EDM's net(x, σ, class_labels), a flow's model(z, t, y))
        try:
            shape = CallShape.read(func, calls, outputs, h0, n)
        except InputError as exc:
            raise InputError(f"{what} {exc}") from None
        if shape.guidance is not None and shape.guidance.limited and seen["calls"] > len(calls):
            raise InputError(f"{what} the model's loop calls f {seen['calls']} times, guided on some calls only, and "
                             f"dise reads where it guides from its first {MAX_CALLS_READ} calls; sample with fewer "
                             f"steps for dise to read it, or wrap the guided velocity as one module f(x, t, ...)")
        if more_args is not None:
            _, more = first_calls(module, func, block, more_args, done=lambda so_far: shape.stage_found(so_far, n + 1))
            more = shape.stage(more, n + 1)
            shape = shape.confirm_rows(more, n + 1) if len(more) == shape.calls_per_stage else shape
    # f probed at the grid's start; on the default [0, 1], at 1: a loop's f may be undefined at 0 (a
    # denoiser's log σ), and the default's direction says nothing of the loop's
    probe = grid.flip(0) if grid_source == DEFAULT_SOURCE else grid
    context = None
    try:
        if shape is None:
            order = detect_arg_order(func, h0, float(probe[0]) * (time_scale or 1.0), layout)
            inner = func
        else:
            order, inner = "t,x", Conditioned(func, shape, shape.values(shape.stage(calls, n)))
        chain = loop_func(inner, order, time_scale, loop_form)
        start = h0 if loop_form is None else loop_form.start(h0)
        if shape is not None and shape.per_row:
            context = _conditioning_context(chain, inner, n)
            layout = layout.with_context(context.width)
            start = layout.pack(start, context.gather(chain, n, start.dtype, start.device, first_call=lambda: None))
        field = VectorField.detect(chain, start, probe, layout, order=order, context=context)
    except InputError as exc:
        raise InputError(f"{what} {exc}; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - the user's f rejecting what dise took as its state
        raise InputError(f"{what} its ODE function '{attr}' rejects the block's input {layout.describe()} "
                         f"({type(exc).__name__}: {first_line(exc)}); {hint}") from None
    encoder = decoder = None
    if kind == "sequential":
        encoder, decoder = sequential_split(module, path)
    model = AttributeModel(module, field, grid, layout, kind=kind, block_path=path, func_attr=attr,
                           output_format=_output_format(seen["out"], h0, len(grid), root=not path), encoder=encoder,
                           decoder=decoder)
    model.join = join
    model.call_shape, model.held = shape, (None if shape is None else shape.values(shape.stage(calls, n)))
    model.output_key, model.output_note = output_key, output_note(out, output_key, n)
    model.output_time_major = time_major_output(out, n, output_key)
    model.t_span_source = grid_source
    model.time_scale, model.loop_form = time_scale, loop_form
    model.func_description = (f"{path}.{attr}".lstrip(".") + (f" at {time_scale:g} x t" if time_scale else "") +
                              (" as a denoiser D(x, σ): f = (x - D) / σ" if loop_form and loop_form.denoiser else "") +
                              (f" ({shape.describe()})" if shape is not None else ""))
    model.func_class = type(func).__name__
    model.func_modules = [chain]
    return model


def _calls_of(module: nn.Module, outer: nn.Module, path: str, attr: str, model_args: tuple) -> int:
    """How many times one forward of ``module`` calls the function ``attr`` of ``outer``'s submodule ``path``."""
    func = getattr(outer.get_submodule(path) if path else outer, attr)
    count = [0]
    if not isinstance(func, nn.Module):
        return 0
    handle = func.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        module(*model_args)
    finally:
        handle.remove()
    return count[0]


def _conditioning_context(chain: nn.Module, inner: Conditioned, n: int) -> RowContext:
    """The per-sample arguments ``inner`` holds, as ``chain`` (f as dise solves it) reaches them."""
    blocks = 2 if inner.shape.guidance is not None and inner.shape.guidance.kind == "doubled" else 1
    mine = {id(t) for name in inner.shape.per_row for t in row_tensors(inner.given[name], n, blocks)}
    found = RowContext.find(chain, n)
    paths = frozenset(p for p in (found.paths if found is not None else ()) if id(resolve(chain, p)) in mine)
    context = None if found is None else found.only(paths)
    if context is None or len(context.paths) != len(mine):
        raise InputError(f"dise cannot carry f's per-sample arguments ({', '.join(inner.shape.per_row)}) with its state")
    return context


def _grid(block: nn.Module, t_span: torch.Tensor | None, data_t: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """--t-span, else the block's time attribute, else the data's 't', else [0, 1]."""
    if t_span is not None:
        return t_span.to(torch.float64), "--t-span"
    found = time_attr(block)
    if found is not None:
        return found
    if data_t is not None and data_t.ndim == 1:
        return data_t.detach().to("cpu", torch.float64), "data 't'"
    return torch.tensor(DEFAULT_T_SPAN, dtype=torch.float64), DEFAULT_SOURCE


def _output_format(out: Any, h0: torch.Tensor, n_t: int, root: bool = False) -> str:
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], torch.Tensor):
        return "torchdyn"
    if isinstance(out, torch.Tensor):
        if out.shape == h0.shape:
            return "final"
        if out.shape == (n_t, *h0.shape):
            return "trajectory"
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    hint = ("; where the model's own forward runs its loop and then more (a decoder, a projection), move the "
            "loop into a module of its own that the forward calls (a sampler block): dise reads that block and "
            "runs the rest as the model does") if root else ""
    raise InputError(f"the ODE block returns {shape} for h(0) of shape {tuple(h0.shape)}; dise understands "
                     f"the final state, the trajectory [T, N, ...], or torchdyn's (t, trajectory){hint}")


def time_major_output(out: Any, n: int, key: str | None = None) -> bool:
    """Whether the model's output (``key`` picks it from several, see ``pick_output``) keeps its samples
    on axis 1: time first (``[T, N, ...]`` as odeint returns it), or trajectory samples first
    (Rubanova's latent ODE returns ``[S, N, T, D]``)."""
    out = pick_output(out, key)
    if not isinstance(out, torch.Tensor) or out.ndim == 0:
        raise InputError(f"the model returns {type(out).__name__}; dise needs a tensor output")
    if out.shape[0] == n:
        return False
    if out.ndim >= 2 and out.shape[1] == n:
        return True
    raise InputError(f"cannot find the batch dimension ({n}) in the model's output of shape {tuple(out.shape)}")


def _rows_of(value: Any) -> int | None:
    """The rows of one of f's arguments or outputs (its first tensor, in a tuple, list or dict)."""
    leaves = [v for v in tree_leaves(value) if isinstance(v, torch.Tensor) and v.ndim]
    return len(leaves[0]) if leaves else None

