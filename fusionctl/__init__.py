"""fusionctl: Wasserstein-barycenter model fusion and linear mode connectivity experiments."""

__version__ = "0.1.0"
