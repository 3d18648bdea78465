"""Vision-language model backends shared by the VLM judge and the pairwise labeller.

``base`` holds what both roles ask of a backend (a chat prompt of text and images; the probability of
each allowed answer, or a generated reply); ``local`` runs Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints
on transformers without torchvision; ``endpoint`` talks to any OpenAI-compatible server.
"""
