"""dise: dynamic integrator selection for Neural ODEs (profile, select, export)."""
__version__ = "0.1.0"


def load(path, device="cpu", code_path=()):
    """A ``.dise`` bundle as an ``nn.Module``: ``model(x)`` gives the outputs, ``model(x,
    return_stats=True)`` also each sample's integrator, NFE and fallback flag."""
    from dise_cli.bundle import load_bundle
    return load_bundle(path, device=device, code_path=tuple(code_path))
