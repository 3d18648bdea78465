"""The anti-aesthetic dimensions: project-written catalogue data, user overrides, VisionReward rubrics."""

from .catalogue import Catalogue, Dimension, load_catalogue, parse_dims
from .visionreward import load_visionreward_rubric

__all__ = ["Catalogue", "Dimension", "load_catalogue", "load_visionreward_rubric", "parse_dims"]
