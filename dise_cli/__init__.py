"""dise: dynamic integrator selection for Neural ODEs (profile, select, export)."""
__version__ = "0.1.0"
