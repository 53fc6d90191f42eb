"""Sample Neural ODEs shipped with dise: architectures, training scripts, weights and data."""
