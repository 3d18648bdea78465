"""A tiny deterministic generator for the generate-stage tests: each image is random noise drawn from a
hash of everything in its request (and the LoRA scale), so equal requests give equal images.

Not registered on import: the contract tests run over every registered backend. ``register_fake()``
registers it (a fixture pops it again; a subprocess calls it before the CLI)."""

import time

import numpy as np
from PIL import Image

from aesthetic_audit.clients import EndpointUnreachable
from aesthetic_audit.errors import AuditError, ConfigError
from aesthetic_audit.hashing import spec_hash
from aesthetic_audit.images.generators.base import GenerationResult, Generator, OutOfMemory
from aesthetic_audit.registry import _REGISTRY, register

NAME = "fake-gen"


class FakeGenerator(Generator):
    name = NAME
    description = "test only: noise drawn from a hash of the request"
    supports_img2img = True
    supports_negative_prompt = True
    calls: list[int] = []       # the size of every generate() call, out-of-memory ones included
    requests: list = []         # every request it was given, in order
    loads = 0
    # A flaky service, outside the identity: prompts holding one of these fail, or come back as a flat frame.
    refuse: set[str] = set()
    blank: set[str] = set()

    def __init__(self, *, size=48, delay_s=0.0, oom_above=None, down_if=None, unloadable=False,
                 ignore_prompt=False, lora=None, lora_scale=1.0, batch_size=1):
        if size < 8:
            raise ConfigError(f"size must be at least 8, got {size}")
        super().__init__(size=size, delay_s=delay_s, oom_above=oom_above, down_if=down_if, unloadable=unloadable,
                         ignore_prompt=ignore_prompt, lora=lora, lora_scale=lora_scale, batch_size=batch_size)

    def _load(self):
        if self.options["unloadable"]:
            raise AuditError("weights /models/fake.safetensors are missing")
        FakeGenerator.loads += 1

    def _generate(self, requests):
        o = self.options
        FakeGenerator.calls.append(len(requests))
        if o["oom_above"] is not None and len(requests) > o["oom_above"]:
            raise OutOfMemory(f"{len(requests)} requests")
        out = []
        for r in requests:
            FakeGenerator.requests.append(r)
            if o["down_if"] and o["down_if"] in r.prompt:
                raise EndpointUnreachable("fake endpoint: connection refused 3 times in a row")
            time.sleep(o["delay_s"])
            if any(word in r.prompt for word in FakeGenerator.refuse):
                out.append(GenerationResult(None, error="the fake model refused this prompt"))
                continue
            size = o["size"]
            if any(word in r.prompt for word in FakeGenerator.blank):
                out.append(GenerationResult(Image.new("RGB", (size, size), (0, 0, 255))))
                continue
            spec = r.spec()
            if o["ignore_prompt"]:
                spec.pop("prompt")
            rng = np.random.default_rng(int(spec_hash([spec, o["lora_scale"]])[:15], 16))
            noise = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
            if r.init_image is not None:
                init = np.asarray(r.init_image.convert("RGB").resize((size, size)), dtype=np.float64)
                noise = (1 - r.strength) * init + r.strength * noise
            out.append(GenerationResult(Image.fromarray(noise.round().astype(np.uint8))))
        return out


def register_fake():
    FakeGenerator.calls, FakeGenerator.requests, FakeGenerator.loads = [], [], 0
    FakeGenerator.refuse, FakeGenerator.blank = set(), set()
    register("generators")(FakeGenerator)
    return FakeGenerator


def unregister_fake():
    _REGISTRY["generators"].pop(NAME, None)
