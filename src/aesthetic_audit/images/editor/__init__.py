"""Editor transforms: pixel operations that turn a photo I_o into an anti-aesthetic I_a.

One module per family of effects; each transform is registered by name with ``@transform``.
"""
