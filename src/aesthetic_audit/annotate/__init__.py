"""A small web app in which people label a run's image pairs, with live agreement against the labellers.

``prepare(run_dir, ...)`` creates (or resumes) the study stored in ``RUN/annotate/setup.json``: the pairs, each
rater's secret token, order and presentation sides. ``create_app(run_dir)`` is the FastAPI app that serves
it (the ``app`` extra); ``aesthetic-audit annotate RUN`` does both and serves on 127.0.0.1. Answers are
``labels`` records with source ``human:<rater>``, read by analyze, report and export like imported ones.
"""

from __future__ import annotations

from .app import bind, create_app, is_loopback, serve
from .session import Setup, load_setup, prepare

__all__ = ["Setup", "bind", "create_app", "is_loopback", "load_setup", "prepare", "serve"]
