"""Text-to-image (and image-to-image) generators: diffusers pipelines, hosted image APIs, and the
study's generators as presets. One module per backend; presets are data (``data/presets.yaml``)."""
