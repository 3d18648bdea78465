"""Rewriters turn a caption and a set of anti-aesthetic effects into p_a. One module per backend."""
