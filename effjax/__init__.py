"""effjax: efficient neural architectures in JAX/Flax."""
