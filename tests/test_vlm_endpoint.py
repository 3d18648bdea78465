"""The endpoint VLM backend against a local, scripted OpenAI-compatible server.

Expected probabilities are worked out here with numpy from the log-probabilities the server is told to
return. Sleeps are recorded, not slept, and the jitter source returns 0, so backoff waits are exact.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from typing import Any

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.clients import EndpointUnreachable
from aesthetic_audit.errors import ConfigError, InputError
from aesthetic_audit.vlm import endpoint
from aesthetic_audit.vlm.base import Prompt, make_backend
from aesthetic_audit.vlm.endpoint import EndpointVLM
from fake_vlm import (FakeVLM, Sampler, chat, legacy_logprobs, logprobs, no_logprobs, raw, status)

KEY_ENV = "AESTHETIC_AUDIT_TEST_VLM_KEY"
SECRET = "sk-vlm-test-0123456789abcdef"
LEVELS = ("0", "1", "2")


@pytest.fixture
def server():
    with FakeVLM() as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(sleeps, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    def build(url: str, **options: Any) -> EndpointVLM:
        options = {"model": "served-model", "api_key_env": KEY_ENV, "retries": 2, "backoff_s": 1.5,
                   "timeout_s": 10, **options}
        return EndpointVLM(url=url, sleep=record, rand=lambda: 0.0, **options)

    return build


def image(seed: int, size: tuple[int, int] = (12, 8)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def question(key: str, img: Image.Image | None = None, system: str | None = None) -> Prompt:
    return Prompt((f"Rate {key} from 0 to 2.", img or image(0), "Answer with one digit."), system=system)


def softmax_mass(groups: list[list[float]]) -> np.ndarray:
    """Probability of each answer: the summed mass of its listed log-probabilities, renormalised."""
    mass = np.array([np.exp(np.array(g)).sum() if g else 0.0 for g in groups])
    return mass / mass.sum()


def decode(url: str) -> np.ndarray:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


# --- log-probabilities -------------------------------------------------------------------------------------

def test_logprobs_give_softmax_over_the_answers(server, make):
    top = [("1", -0.35), ("2", -1.6), ("The", -2.2), ("0", -2.9), ("3", -4.0)]
    server.script("item-00", logprobs(top))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert res.ok and not res.discrete and res.samples is None
    expected = np.exp([-2.9, -0.35, -1.6]) / np.exp([-2.9, -0.35, -1.6]).sum()
    np.testing.assert_allclose(res.probs, expected, rtol=1e-12)
    np.testing.assert_allclose(res.logits, [-2.9, -0.35, -1.6], rtol=1e-12)
    assert res.answers == LEVELS and sorted(res.tokens) == ["0", "1", "2"]
    [sent] = server.requests("item-00")
    body = sent["body"]
    assert (body["model"], body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == \
        ("served-model", 1, 0, True, 20)
    assert "n" not in body


def test_whitespace_variants_are_summed(server, make):
    top = [("1", -0.5), ("x", -0.9), (" 1", -1.2), ("2", -1.5), ("\n0", -2.0), ("0", -3.1), (" 2 ", -5.0)]
    server.script("item-00", logprobs(top))
    [res] = make(server.base_url, top_logprobs=7).answer_probs([question("item-00")], LEVELS)
    groups = [[-2.0, -3.1], [-0.5, -1.2], [-1.5, -5.0]]
    np.testing.assert_allclose(res.probs, softmax_mass(groups), rtol=1e-12)
    np.testing.assert_allclose(res.logits, [np.logaddexp.reduce(g) for g in groups], rtol=1e-12)
    assert set(res.tokens) == {"1", " 1", "2", " 2 ", "\n0", "0"}
    assert server.requests("item-00")[0]["body"]["top_logprobs"] == 7


def test_answer_missing_from_top_list_gets_zero(server, make):
    server.script("item-00", logprobs([("1", -0.2), ("0", -1.9), ("A", -2.5)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    np.testing.assert_allclose(res.probs, softmax_mass([[-1.9], [-0.2], []]), rtol=1e-12)
    assert res.probs[2] == 0 and res.logits is None and res.extra["missing"] == ["2"]


def test_completions_style_logprobs(server, make):
    server.script("item-00", legacy_logprobs({"2": -0.1, " 1": -2.6, "0": -4.2, "hmm": -5.0}))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    np.testing.assert_allclose(res.probs, softmax_mass([[-4.2], [-2.6], [-0.1]]), rtol=1e-12)
    assert not res.discrete


def test_yes_no_answers(server, make):
    server.script("item-00", logprobs([("Yes", -0.7), ("No", -0.9), (" yes", -2.0)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], ("Yes", "No"))
    np.testing.assert_allclose(res.probs, softmax_mass([[-0.7], [-0.9]]), rtol=1e-12)  # " yes" is another answer


# --- sampled fallback --------------------------------------------------------------------------------------

SAMPLES = ["2", "2", " 1", "1\n", "0", "2", "maybe", "2.", "1", "0"]


def _counts(samples: list[str]) -> tuple[np.ndarray, int]:
    counts = np.array([sum(s.strip().startswith(a) for s in samples) for a in LEVELS], dtype=float)
    return counts, int(counts.sum())


@pytest.mark.parametrize("field", ["null", "missing"])
def test_no_logprobs_falls_back_to_sampled_answers(server, make, field):
    server.script("item-00", no_logprobs(field=field), Sampler(SAMPLES))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    counts, valid = _counts(SAMPLES)
    assert valid == 9  # "maybe" is no answer
    assert res.ok and res.discrete and res.samples == valid
    np.testing.assert_allclose(res.probs, counts / valid, rtol=1e-12)
    first, second = server.requests("item-00")
    assert second["body"]["n"] == 10 and second["body"]["temperature"] == 1.0
    assert "logprobs" not in second["body"]
    assert res.extra["sampled"] == 10 and res.extra["invalid_examples"] == ["maybe"]


def test_answers_outside_the_top_list_fall_back_to_sampling(server, make):
    server.script("item-00", logprobs([("The", -0.1), ("A", -2.3)]), Sampler(["1"] * 7 + ["0"] * 3))
    [res] = make(server.base_url, samples=10).answer_probs([question("item-00")], LEVELS)
    assert res.discrete and res.samples == 10
    np.testing.assert_allclose(res.probs, [0.3, 0.7, 0.0], rtol=1e-12)
    assert "none of the answers" in res.extra["fallback"]


def test_server_ignoring_n_is_asked_again(server, make):
    server.script("item-00", no_logprobs(), default=Sampler(SAMPLES, honour_n=False))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    counts, valid = _counts(SAMPLES)
    np.testing.assert_allclose(res.probs, counts / valid, rtol=1e-12)
    sent = server.requests("item-00")
    assert len(sent) == 1 + 10
    assert [r["body"]["n"] for r in sent[1:]] == list(range(10, 0, -1))  # each asks for what is still missing
    assert res.extra["sample_requests"] == 10


def test_refused_logprobs_fall_back_to_sampling(server, make):
    server.script("item-00", status(400, "logprobs is not supported for this model"), Sampler(["2"] * 6 + ["0"] * 4))
    server.script("item-01", Sampler(["1"] * 10))
    backend = make(server.base_url, concurrency=1)
    [res] = backend.answer_probs([question("item-00")], LEVELS)
    assert res.discrete and res.samples == 10
    np.testing.assert_allclose(res.probs, [0.4, 0.0, 0.6], rtol=1e-12)
    [later] = backend.answer_probs([question("item-01")], LEVELS)  # known now: sampled straight away
    assert later.probs == (0.0, 1.0, 0.0)
    assert [r["body"].get("logprobs") for r in server.requests("item-01")] == [None]


def test_longest_answer_wins_a_shared_prefix(server, make):
    server.script("item-00", no_logprobs(), Sampler(["10", "1", "10", "10 points"]))
    [res] = make(server.base_url, samples=4).answer_probs([question("item-00")], ("1", "10"))
    np.testing.assert_allclose(res.probs, [0.25, 0.75], rtol=1e-12)


def test_no_valid_sampled_answer_is_an_error(server, make):
    server.script("item-01", no_logprobs(), Sampler(["I think", "unclear"] * 5))
    results = make(server.base_url).answer_probs([question("item-00"), question("item-01")], LEVELS)
    assert results[0].ok
    bad = results[1]
    assert not bad.ok and bad.probs is None
    assert bad.error.startswith("item 1: ") and "none of 10 sampled answers" in bad.error and "\n" not in bad.error


# --- failures ------------------------------------------------------------------------------------------------

def test_malformed_json_body_is_an_item_error(server, make, sleeps):
    server.script("item-00", default=raw(200, b'{"choices": [oops'))
    results = make(server.base_url).answer_probs([question("item-00"), question("item-01")], LEVELS)
    bad = results[0]
    assert not bad.ok and bad.error.startswith("item 0: ") and "not JSON" in bad.error
    assert "\n" not in bad.error and bad.extra["attempts"] == 3
    assert len(server.requests("item-00")) == 3 and results[1].ok


def test_malformed_json_then_success(server, make, sleeps):
    server.script("item-00", raw(200, b"<html>bad gateway</html>"), logprobs([("2", -0.01), ("1", -4.6)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert res.ok and res.extra["retries"] == 1 and sleeps == [1.5]


def test_429_then_success_honours_retry_after(server, make, sleeps):
    server.script("item-00", status(429, "slow down", {"Retry-After": "4"}), logprobs([("0", -0.1), ("1", -2.4)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    np.testing.assert_allclose(res.probs, softmax_mass([[-0.1], [-2.4], []]), rtol=1e-12)
    assert sleeps == [4.0] and res.extra["attempts"] == 2


def test_500_then_success(server, make, sleeps):
    server.script("item-00", status(500), status(503), logprobs([("1", -0.1), ("2", -2.4)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert res.ok and sleeps == [1.5, 3.0]


def test_500_forever_is_an_error_and_others_go_on(server, make, sleeps):
    server.script("item-01", default=status(500, "model overloaded"))
    prompts = [question(f"item-{i:02d}") for i in range(3)]
    results = make(server.base_url, concurrency=2).answer_probs(prompts, LEVELS)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.startswith("item 1: ") and "HTTP 500" in results[1].error
    assert "model overloaded" in results[1].error and len(server.requests("item-01")) == 3


def test_other_4xx_is_not_retried(server, make, sleeps):
    server.script("item-00", status(400, "image too large"), logprobs([("1", -0.1)]))
    [res] = make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert res.error.startswith("item 0: HTTP 400") and "image too large" in res.error
    assert len(server.requests("item-00")) == 1 and sleeps == []


def test_refused_connection_raises_endpoint_unreachable(make):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    backend = make(f"http://127.0.0.1:{port}/v1", retries=1, backoff_s=0)
    with pytest.raises(EndpointUnreachable, match="could not connect"):
        backend.answer_probs([question(f"item-{i:02d}") for i in range(6)], LEVELS)
    with pytest.raises(EndpointUnreachable):
        backend.generate([question(f"item-{i:02d}") for i in range(6)])


# --- the key -----------------------------------------------------------------------------------------------

def test_key_is_sent_as_bearer_and_never_shown(server, make, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script("item-01", status(401, f"Invalid API key {SECRET}"))
    backend = make(server.base_url)
    results = backend.answer_probs([question("item-00"), question("item-01")], LEVELS)
    assert results[0].ok
    assert {r["headers"]["Authorization"] for r in server.requests()} == {f"Bearer {SECRET}"}
    assert SECRET not in results[1].error and "[API key]" in results[1].error
    assert SECRET not in json.dumps(backend.identity()) and SECRET not in repr(backend.options)


def test_no_key_set_sends_none(server, make):
    make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert "Authorization" not in server.requests("item-00")[0]["headers"]


def test_credentials_in_url_are_refused_without_echo():
    with pytest.raises(ConfigError) as caught:
        EndpointVLM(url=f"http://user:{SECRET}@127.0.0.1:9/v1", model="m")
    assert SECRET not in str(caught.value) and "api_key_env" in str(caught.value)
    with pytest.raises(ConfigError, match="query string"):
        EndpointVLM(url=f"http://127.0.0.1:9/v1?key={SECRET}", model="m")


# --- what is sent ------------------------------------------------------------------------------------------

def test_images_and_text_arrive_in_order(server, make):
    first, second = image(1), image(2, (9, 5))
    prompt = Prompt(("item-00: compare", first, "with", second, "then answer"), system="You are a judge.")
    make(server.base_url).answer_probs([prompt], LEVELS)
    [sent] = server.requests("item-00")
    system, user = sent["body"]["messages"]
    assert system == {"role": "system", "content": "You are a judge."}
    assert user["role"] == "user"
    parts = user["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["item-00: compare", "with", "then answer"]
    np.testing.assert_array_equal(decode(parts[1]["image_url"]["url"]), np.asarray(first))
    np.testing.assert_array_equal(decode(parts[3]["image_url"]["url"]), np.asarray(second))


def test_no_system_turn_without_system(server, make):
    make(server.base_url).answer_probs([question("item-00")], LEVELS)
    assert [m["role"] for m in server.requests("item-00")[0]["body"]["messages"]] == ["user"]


def test_a_shared_image_is_encoded_once(server, make, monkeypatch):
    calls = []
    real = endpoint.encode_image

    def counting(img: Image.Image, fmt: str) -> str:
        calls.append(id(img))
        return real(img, fmt)

    monkeypatch.setattr(endpoint, "encode_image", counting)
    shared, other = image(3), image(4)
    prompts = [question(f"item-{i:02d}", shared) for i in range(5)] + [question("item-09", other)]
    results = make(server.base_url, concurrency=3).answer_probs(prompts, LEVELS)
    assert all(r.ok for r in results)
    assert sorted(calls) == sorted([id(shared), id(other)])
    urls = {p["image_url"]["url"] for r in server.requests() for p in r["body"]["messages"][0]["content"]
            if p["type"] == "image_url"}
    assert len(urls) == 2 and len(server.requests()) == 6


@pytest.mark.parametrize("fmt, mime", [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_image_format(server, make, fmt, mime):
    img = image(5)
    make(server.base_url, image_format=fmt).answer_probs([question("item-00", img)], LEVELS)
    url = server.requests("item-00")[0]["body"]["messages"][0]["content"][1]["image_url"]["url"]
    header, payload = url.split(",", 1)
    assert header == f"data:{mime};base64"
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"), dtype=float)
    if fmt == "webp":  # lossless
        np.testing.assert_array_equal(decoded, np.asarray(img, dtype=float))
    else:
        assert decoded.shape == np.asarray(img).shape


# --- generate ----------------------------------------------------------------------------------------------

SCHEMA = {"title": "pair_choice", "type": "object", "properties": {"choice": {"enum": ["first", "second", "tie"]}},
          "required": ["choice"], "additionalProperties": False}


def test_generate_sends_schema_seed_and_returns_text(server, make):
    server.script("item-00", chat('{"choice": "second"}'))
    [reply] = make(server.base_url).generate([question("item-00")], max_tokens=32, temperature=0.2,
                                              json_schema=SCHEMA, seed=2**40 + 7)
    assert reply.ok and json.loads(reply.text) == {"choice": "second"}
    body = server.requests("item-00")[0]["body"]
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "pair_choice", "schema": SCHEMA, "strict": True}}
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (32, 0.2, (2**40 + 7) % 2**31)


def test_generate_without_schema_or_seed(server, make):
    server.script("item-00", chat("first"))
    [reply] = make(server.base_url).generate([question("item-00")])
    body = server.requests("item-00")[0]["body"]
    assert reply.text == "first" and "response_format" not in body and "seed" not in body


def test_rejected_response_format_is_retried_without_it(server, make):
    rejected = status(400, "response_format json_schema is not supported by this server")
    server.script("item-00", rejected, chat('{"choice": "tie"}'))
    server.script("item-01", chat('{"choice": "first"}'))
    backend = make(server.base_url, concurrency=1)
    [reply] = backend.generate([question("item-00")], json_schema=SCHEMA)
    assert reply.text == '{"choice": "tie"}'
    first, second = server.requests("item-00")
    assert "response_format" in first["body"] and "response_format" not in second["body"]
    [later] = backend.generate([question("item-01")], json_schema=SCHEMA)  # known now: not sent again
    assert later.ok and "response_format" not in server.requests("item-01")[0]["body"]


def test_other_400_is_an_error_not_a_schema_retry(server, make):
    server.script("item-00", status(400, "too many images in one prompt"), chat("never"))
    [reply] = make(server.base_url).generate([question("item-00")], json_schema=SCHEMA)
    assert not reply.ok and reply.error.startswith("item 0: HTTP 400") and len(server.requests("item-00")) == 1


def test_empty_reply_is_an_error(server, make):
    server.script("item-00", chat(None))
    [reply] = make(server.base_url).generate([question("item-00")])
    assert not reply.ok and reply.text is None and reply.error.startswith("item 0: the reply has no text")


def test_generate_500_forever(server, make, sleeps):
    server.script("item-00", default=status(502, "bad gateway"))
    [reply] = make(server.base_url, retries=1).generate([question("item-00")])
    assert reply.error.startswith("item 0: ") and "HTTP 502" in reply.error and sleeps == [1.5]


# --- options and identity ----------------------------------------------------------------------------------

def test_identity_holds_what_changes_answers():
    base = EndpointVLM(url="https://api.example.org:8443/v1/", model="qwen-vl", concurrency=2, timeout_s=5)
    assert base.identity() == {"backend": "endpoint", "version": "1", "url": "api.example.org:8443/v1",
                               "model": "qwen-vl", "samples": 10, "top_logprobs": 20, "image_format": "png"}
    faster = EndpointVLM(url="https://api.example.org:8443/v1", model="qwen-vl", concurrency=16, timeout_s=60,
                         retries=9, api_key_env="OTHER_KEY")
    assert faster.identity() == base.identity()
    assert EndpointVLM(url="https://api.example.org:8443/v1", model="qwen-vl", samples=20).identity() != \
        base.identity()


def test_make_backend_builds_the_endpoint():
    backend = make_backend({"url": "http://localhost:8000/v1", "model": "m", "samples": 5})
    assert isinstance(backend, EndpointVLM) and backend.identity()["samples"] == 5


@pytest.mark.parametrize("options, message", [
    ({"url": "http://localhost:8000/v1", "model": "m", "sample": 5}, "unknown option 'sample'"),
    ({"url": "http://localhost:8000/v1"}, "option 'model' is required"),
    ({"url": "http://localhost:8000/v1", "model": "m", "image_format": "gif"}, "image_format"),
    ({"url": "localhost:8000", "model": "m"}, "must start with http"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        EndpointVLM(**options)


def test_bad_answers_are_input_errors(server, make):
    backend = make(server.base_url)
    for answers in [(), ("1", "1"), (" 1", "2")]:
        with pytest.raises(InputError):
            backend.answer_probs([question("item-00")], answers)
    assert server.requests() == []
