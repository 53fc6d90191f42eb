"""dise: dynamic integrator selection for Neural ODEs (profile, select, export).

The Python API (``dise_cli.api``; each command of the CLI as a function)::

    profile(model, out=..., **options)              -> ProfileRun
    train_selector(model, profile, out=..., **options) -> TrainResult
    export(model, selector, out, **options)          -> ExportInfo
    evaluate(bundle, data, **options)                -> report dict
    run(bundle, data, out=..., **options)            -> OfflineResult
    finetune(model, out=..., **options)              -> FinetuneResult
    load(bundle)                                     -> the routed nn.Module

Importing ``dise_cli`` stays light: the API loads on first use.
"""
__version__ = "0.1.0"

API = ("profile", "merge", "train_selector", "export", "evaluate", "run", "finetune")
__all__ = ["__version__", "load", *API]


def load(path, device="cpu", code_path=()):
    """A ``.dise`` bundle as an ``nn.Module``: ``model(x)`` gives the outputs, ``model(x,
    return_stats=True)`` also each sample's integrator, NFE and fallback flag. It takes what the
    model's forward takes: ``model(x, t)`` with a time grid, ``model(noise, labels)`` for several inputs."""
    from dise_cli.bundle import load_bundle
    return load_bundle(path, device=device, code_path=tuple(code_path))


def __getattr__(name):
    if name in API:
        from dise_cli import api
        return getattr(api, name)
    raise AttributeError(f"module 'dise_cli' has no attribute '{name}'")
