"""The hosted image API generators against local scripted servers (tests/fake_images.py).

Sleeps between retries are recorded, not slept, and the jitter source returns 0, so waits are exact. A
distinctive key is set for every test; the last tests check it never leaves in an error, an extra or an
identity, and that image URLs on another origin never receive it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from typing import Any

import numpy as np
import pytest

from aesthetic_audit import registry
from aesthetic_audit.clients import EndpointUnreachable, OpenAICompatClient, RequestFailed
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.images.generators.api import ChatImage, OpenAIImages
from aesthetic_audit.images.generators.base import GenerationRequest, GenerationResult
from fake_images import (FakeImages, b64, chat_ok, data_url, delay, file, flat_png, images_ok, pattern, png,
                         redirect, reply, status)

KEY_ENV = "AESTHETIC_AUDIT_TEST_IMAGES_KEY"
SECRET = "sk-img-test-5f3a9c2e7d1b4a60"
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)  # httpx would send 127.0.0.1 through a proxy
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def api():
    with FakeImages() as fake:
        yield fake


@pytest.fixture
def cdn():
    """A second server on another port: another origin, like a storage bucket the API links to."""
    with FakeImages() as fake:
        yield fake


def make(server: FakeImages | None, sleeps: list[float] | None = None, kind: type = OpenAIImages,
         **options: Any) -> Any:
    options.setdefault("base_url", server.base_url if server else closed_url())
    options.setdefault("model", "test-image-model")
    options.setdefault("api_key_env", KEY_ENV)
    options.setdefault("backoff_s", 0.01)
    options.setdefault("timeout_s", 5.0)

    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    return kind(sleep=sleep, rand=lambda: 0.0, **options)


def req(key: str, seed: int = 7, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(prompt=f"{key}: a blurry, very dark photo of a dog", seed=seed, **kwargs)


def one(gen: Any, request: GenerationRequest) -> GenerationResult:
    [result] = gen.generate([request])
    return result


def pixels(result: GenerationResult) -> np.ndarray:
    assert result.ok, result.error
    return np.asarray(result.image)


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    return f"http://127.0.0.1:{port}/v1"


# --- openai-images: success ------------------------------------------------------------------------------

def test_b64_reply_gives_the_servers_pixels_and_the_minimal_request(api):
    api.script("item-01", images_ok(b64_json=b64(png(pattern("x"))), revised_prompt="a dark, blurred dog"))
    result = one(make(api), req("item-01"))

    assert np.array_equal(pixels(result), pattern("x"))
    assert result.extra == {"seed_sent": False, "revised_prompt": "a dark, blurred dog", "attempts": 1, "retries": 0}
    [sent] = api.requests("item-01")
    assert sent["path"] == "/v1/images/generations"
    assert sent["body"] == {"model": "test-image-model", "prompt": "item-01: a blurry, very dark photo of a dog",
                            "n": 1, "size": "1024x1024"}
    assert sent["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_options_params_and_seed_go_into_the_body(api):
    gen = make(api, quality="hd", style="natural", response_format="b64_json", send_seed=True,
               extra_body={"background": "opaque", "moderation": "low"})
    result = one(gen, req("item-01", seed=1234, params={"width": 512, "height": 256, "quality": "low"}))
    assert result.ok and result.extra["seed_sent"] is True
    assert api.requests("item-01")[0]["body"] == {
        "background": "opaque", "moderation": "low", "size": "512x256", "quality": "low", "style": "natural",
        "response_format": "b64_json", "model": "test-image-model",
        "prompt": "item-01: a blurry, very dark photo of a dog", "n": 1, "seed": 1234}


@pytest.mark.parametrize("kind", [OpenAIImages, ChatImage])
def test_a_large_seed_is_sent_as_31_bits_and_recorded(api, kind):
    if kind is ChatImage:
        api.script("item-01", chat_ok({"images": [{"image_url": {"url": data_url(IMG)}}]}))
    seed = 2**40 + 2**31 + 12345  # the stage derives 60-bit seeds
    result = one(make(api, kind=kind, send_seed=True), req("item-01", seed=seed))
    assert result.ok and result.extra["seed_sent"] is True and result.extra["seed"] == 12345
    assert api.requests("item-01")[0]["body"]["seed"] == 12345
    unsent = one(make(api, kind=kind), req("item-01", seed=seed))
    assert unsent.extra["seed_sent"] is False and "seed" not in unsent.extra


def test_a_batch_runs_concurrently_up_to_the_limit_and_keeps_its_order(api):
    api.gate = threading.Barrier(3)  # every request waits until 3 are in flight together
    gen = make(api, concurrency=3)
    assert gen.batch_size == 12  # four rounds of the concurrency by default
    keys = [f"item-{i:02d}" for i in range(6)]
    results = gen.generate([req(k) for k in keys])
    assert api.max_in_flight == 3
    for key, result in zip(keys, results):
        assert np.array_equal(pixels(result), pattern(key))


def test_url_on_another_origin_is_fetched_without_the_key(api, cdn):
    cdn.files["/bucket/img.png"] = file(png(pattern("cdn")))
    api.script("item-01", images_ok(url=cdn.origin + "/bucket/img.png?sig=abc"))
    result = one(make(api), req("item-01"))
    assert np.array_equal(pixels(result), pattern("cdn"))
    [fetch] = cdn.requests(method="GET")
    assert fetch["path"] == "/bucket/img.png?sig=abc"
    assert "Authorization" not in fetch["headers"]
    assert api.requests("item-01")[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_url_on_the_apis_own_origin_gets_the_key_and_a_redirect_elsewhere_does_not(api, cdn):
    cdn.files["/signed/img.png"] = file(png(pattern("moved")))
    api.files["/v1/files/img.png"] = redirect(cdn.origin + "/signed/img.png?token=t", 307)
    api.script("item-01", images_ok(url=api.origin + "/v1/files/img.png"))
    result = one(make(api), req("item-01"))
    assert np.array_equal(pixels(result), pattern("moved"))
    [own] = api.requests(method="GET")
    assert own["headers"]["Authorization"] == f"Bearer {SECRET}"
    [moved] = cdn.requests(method="GET")
    assert moved["path"] == "/signed/img.png?token=t"
    assert "Authorization" not in moved["headers"]


# --- openai-images: failures ------------------------------------------------------------------------------

def test_429_with_retry_after_then_success(api):
    api.script("item-01", status(429, "slow down", {"Retry-After": "3"}))
    sleeps: list[float] = []
    result = one(make(api, sleeps), req("item-01"))
    assert np.array_equal(pixels(result), pattern("item-01"))
    assert sleeps == pytest.approx([3.0])
    assert len(api.requests("item-01")) == 2
    assert (result.extra["attempts"], result.extra["retries"]) == (2, 1)


def test_500_then_success(api):
    api.script("item-01", status(500), status(503))
    sleeps: list[float] = []
    result = one(make(api, sleeps), req("item-01"))
    assert np.array_equal(pixels(result), pattern("item-01"))
    assert sleeps == pytest.approx([0.01, 0.02])


def test_500_forever_is_an_error_result_after_the_retries(api):
    api.script("item-01", default=status(500, "model\noverloaded"))
    sleeps: list[float] = []
    gen = make(api, sleeps, max_retries=2)
    results = gen.generate([req("item-01"), req("item-02")])
    assert results[0].image is None
    assert results[0].error == "HTTP 500: model overloaded (gave up after 3 attempts)"  # one line
    assert len(api.requests("item-01")) == 3
    assert results[1].ok  # a failed item never fails the batch


def test_timeout_is_retried_then_reported(api):
    api.script("item-01", delay(5, images_ok(b64_json="late")))
    api.script("item-02", default=delay(5, images_ok(b64_json="late")))
    sleeps: list[float] = []
    ok, lost = make(api, sleeps, timeout_s=0.3, max_retries=1).generate([req("item-01"), req("item-02")])
    assert np.array_equal(pixels(ok), pattern("item-01"))
    assert lost.image is None
    assert "timed out after 0.3 s" in lost.error and "gave up after 2 attempts" in lost.error
    assert len(api.requests("item-02")) == 2


@pytest.mark.parametrize("answer, problem", [
    (reply(b"<html>Bad gateway</html>"), "response body is not JSON"),
    (reply({"created": 1}), "the reply has no data[0]: '{\"created\": 1}'"),
    (reply({"data": []}), "the reply has no data[0]"),
    (images_ok(revised_prompt="x"), "data[0] has neither b64_json nor url (keys: revised_prompt)"),
    (images_ok(b64_json="not base64!"), "data[0].b64_json is not valid base64"),
    (images_ok(b64_json=b64(b"GIF89a but not really an image")),
     "image from data[0].b64_json: not a recognised image format"),
    (images_ok(url="file:///etc/passwd"), "data[0].url is neither a data URL nor an http(s) URL"),
])
def test_malformed_replies_are_error_results_naming_the_problem(api, answer, problem):
    api.script("item-01", default=answer)
    result = one(make(api, max_retries=1), req("item-01"))
    assert result.image is None
    assert problem in result.error
    assert "\n" not in result.error


def test_redirect_to_another_scheme_is_refused(api):
    api.files["/v1/img.png"] = redirect("file:///etc/passwd")
    api.script("item-01", images_ok(url=api.origin + "/v1/img.png"))
    result = one(make(api), req("item-01"))
    assert "only http and https URLs are fetched" in result.error


def test_missing_image_file_names_the_url_without_its_signature(api, cdn):
    api.script("item-01", images_ok(url=cdn.origin + "/gone.png?sig=TOPSECRETSIG"))
    result = one(make(api), req("item-01"))
    assert result.error == f"HTTP 404 from GET {cdn.origin}/gone.png (not retried): no such file"


def test_image_over_the_reply_cap_fails(api, cdn):
    cdn.files["/big.png"] = file(png(pattern("big", (64, 64))))  # random pixels: ~12 KB, barely compressible
    api.script("item-01", images_ok(url=cdn.origin + "/big.png"))
    result = one(make(api, max_reply_bytes=4000), req("item-01"))
    assert "is larger than 4000 bytes" in result.error and "max_reply_bytes" in result.error


def test_unreachable_image_host_fails_items_without_stopping_the_stage(api):
    dead = closed_url().removesuffix("/v1")
    for i in range(5):
        api.script(f"item-{i:02d}", images_ok(url=f"{dead}/img{i}.png"))
    results = make(api, max_retries=0, concurrency=1).generate([req(f"item-{i:02d}") for i in range(5)])
    assert all("Connection refused" in r.error for r in results)  # no EndpointUnreachable: the API answered


def test_fetches_that_cannot_connect_do_not_count_towards_the_dead_endpoint_stop():
    client = OpenAICompatClient("http://127.0.0.1:9/v1", max_retries=0, max_connection_failures=2)
    dead = closed_url().removesuffix("/v1")

    async def fetch(i: int) -> str:
        try:
            return (await client.get_bytes(f"{dead}/img{i}.png")).decode()
        except RequestFailed as exc:
            return str(exc)

    outcomes = dict(client.map(fetch, range(4), concurrency=1))
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert all("Connection refused" in text for text in outcomes.values())


def test_uniform_grey_placeholder_is_a_blank_image_error(api):
    api.script("item-01", images_ok(b64_json=b64(flat_png((128, 128, 128)))))
    result = one(make(api), req("item-01"))
    assert result.image is None
    assert result.error.startswith("blank image") and "(128, 128, 128)" in result.error


def test_known_placeholder_hash_is_an_error(api):
    logo = pattern("content-policy logo")
    digest = hashlib.sha256(logo.tobytes()).hexdigest().upper()  # any case is accepted
    api.script("item-01", default=images_ok(b64_json=b64(png(logo))))
    assert one(make(api), req("item-01")).ok
    result = one(make(api, known_placeholders=[digest]), req("item-01"))
    assert result.image is None and result.error == "a known placeholder image"


def test_connection_refused_stops_a_large_batch_after_a_few_attempts():
    sleeps: list[float] = []
    gen = make(None, sleeps, max_retries=1, max_connection_failures=3, concurrency=1)
    with pytest.raises(EndpointUnreachable, match="3 items in a row could not connect") as err:
        gen.generate([req(f"item-{i:02d}") for i in range(20)])
    # One sleep per failed attempt but each item's last: 3 items x 2 attempts, of the 40 the batch could make.
    assert sleeps == pytest.approx([0.01] * 3)
    assert "Connection refused" in str(err.value) and "openai-images.base_url" in str(err.value)
    assert SECRET not in str(err.value)


def test_connection_refused_with_concurrency_stops_early_too():
    sleeps: list[float] = []
    gen = make(None, sleeps, max_retries=1, max_connection_failures=3, concurrency=4)
    with pytest.raises(EndpointUnreachable):
        gen.generate([req(f"item-{i:02d}") for i in range(20)])
    # One sleep per item started: the 4 in flight, plus at most 2 started in the slots of the first two to
    # fail before the third stopped the batch (without the stop: 20).
    assert 3 <= len(sleeps) <= 6


# --- what the API cannot do ------------------------------------------------------------------------------

def test_negative_prompt_is_an_error_naming_the_option_and_nothing_is_sent(api):
    result = one(make(api), req("item-01", negative_prompt="polished, beautiful"))
    assert result.image is None and "negative_in_prompt: true" in result.error
    assert api.requests() == []


def test_negative_in_prompt_appends_it_as_text_and_records_what_was_sent(api):
    result = one(make(api, negative_in_prompt=True), req("item-01", negative_prompt="polished, beautiful"))
    sent = api.requests("item-01")[0]["body"]["prompt"]
    assert sent == "item-01: a blurry, very dark photo of a dog\nAvoid: polished, beautiful"
    assert result.ok and result.extra["prompt_sent"] == sent


def test_image_to_image_request_is_an_error_and_nothing_is_sent(api):
    result = one(make(api), req("item-01", init_image_sha="ab" * 32, strength=0.5))
    assert "cannot do image-to-image" in result.error
    assert api.requests() == []


@pytest.mark.parametrize("params, problem", [
    ({"seed": 3}, "params may not set seed"),
    ({"width": 512}, "only one of width and height"),
])
def test_params_that_clash_with_options_are_errors(api, params, problem):
    result = one(make(api), req("item-01", params=params))
    assert problem in result.error and api.requests() == []


# --- chat-image ------------------------------------------------------------------------------------------

def chat(server: FakeImages, sleeps: list[float] | None = None, **options: Any) -> ChatImage:
    return make(server, sleeps, kind=ChatImage, **options)


IMG = png(pattern("chat"))


@pytest.mark.parametrize("message, where", [
    ({"content": "Here is your image.", "images": [{"type": "image_url", "image_url": {"url": data_url(IMG)}}]},
     "message.images[0]"),
    ({"content": [{"type": "text", "text": "Done."}, {"type": "image_url", "image_url": {"url": data_url(IMG)}}]},
     "message.content[1].image_url"),
    ({"content": [{"type": "image_url", "image_url": data_url(IMG)}]}, "message.content[0].image_url"),
    ({"content": f"Sure! ![image]({data_url(IMG)}) Enjoy."}, "a data URL in message.content"),
    ({"content": [{"type": "text", "text": f"inline: {data_url(IMG)}"}]}, "a data URL in message.content"),
])
def test_chat_reply_shapes(api, message, where):
    api.script("item-01", chat_ok(message))
    gen = chat(api, extra_body={"modalities": ["image", "text"]}, send_seed=True)
    result = one(gen, req("item-01", seed=99))
    assert np.array_equal(pixels(result), pattern("chat"))
    [sent] = api.requests("item-01")
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"messages": [{"role": "user", "content": "item-01: a blurry, very dark photo of a dog"}],
                            "modalities": ["image", "text"], "model": "test-image-model", "seed": 99}
    assert "base64" not in result.extra.get("reply_text", "")  # the text is kept, the image data is not


def test_chat_image_url_is_fetched_from_another_origin_without_the_key(api, cdn):
    cdn.files["/out.png"] = file(IMG)
    api.script("item-01", chat_ok({"content": "", "images": [{"image_url": {"url": cdn.origin + "/out.png"}}]}))
    result = one(chat(api), req("item-01"))
    assert np.array_equal(pixels(result), pattern("chat"))
    assert "Authorization" not in cdn.requests(method="GET")[0]["headers"]


def test_chat_reply_without_an_image_quotes_its_start(api):
    api.script("item-01", chat_ok({"content": "I can only describe images: " + "x" * 500}))
    api.script("item-02", chat_ok({"content": None, "refusal": "not allowed"}, finish_reason="content_filter"))
    no_image, refused = chat(api).generate([req("item-01"), req("item-02")])
    assert no_image.error.startswith("no image in the reply (finish_reason stop); content starts "
                                     "'I can only describe images: xxx")
    assert len(no_image.error) < 400
    assert refused.error == "no image in the reply (finish_reason content_filter); the model refused: not allowed"


def test_chat_data_url_that_is_not_base64_is_an_error(api):
    api.script("item-01", chat_ok({"content": [{"type": "image_url", "image_url": {"url": "data:image/png,%89PNG"}}]}))
    result = one(chat(api), req("item-01"))
    assert "message.content[0].image_url is a data URL that is not base64" in result.error


def test_chat_blank_image_is_an_error(api):
    api.script("item-01", chat_ok({"content": f"![x]({data_url(flat_png((0, 0, 0)))})"}))
    assert one(chat(api), req("item-01")).error.startswith("blank image: one flat colour (0, 0, 0)")


# --- identity, options, registry -------------------------------------------------------------------------

def test_identity_holds_what_changes_images_and_nothing_secret_or_runtime():
    gen = OpenAIImages(base_url="https://images.example.com/v1/", model="m", size="512x512",
                       api_key_env=KEY_ENV, concurrency=9, timeout_s=3, max_reply_bytes=10, send_seed=True)
    assert gen.identity() == {"name": "openai-images", "version": "1", "options": {
        "base_url": "https://images.example.com/v1", "model": "m", "size": "512x512", "quality": None,
        "style": None, "response_format": None, "extra_body": {}, "send_seed": True, "negative_in_prompt": False,
        "known_placeholders": []}}
    assert OpenAIImages(model="m", concurrency=1).identity() == OpenAIImages(model="m", concurrency=8).identity()
    assert OpenAIImages(model="m", size="1x1").identity() != OpenAIImages(model="m").identity()
    chat_id = ChatImage(base_url="http://h/v1", model="m", negative_in_prompt=True).identity()
    assert chat_id["name"] == "chat-image" and chat_id["options"]["negative_in_prompt"] is True


@pytest.mark.parametrize("options, message", [
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"extra_body": {"prompt": "x"}}, "option 'extra_body': sets prompt"),
    ({"known_placeholders": ["abc"]}, "'abc' is not a SHA-256 hex digest"),
    ({"concurrency": 0}, "option 'concurrency'"),
    ({"base_url": "ftp://host"}, "must start with http:// or https://"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        OpenAIImages(**options)


@pytest.mark.parametrize("kind", [OpenAIImages, ChatImage])
@pytest.mark.parametrize("url", ["https://user:pw-5f3a@images.example.com/v1", "https://images.example.com/v1?key=5f3a",
                                 "https://tok-5f3a@images.example.com/v1", "https://images.example.com/v1#5f3a"])
def test_credentials_in_base_url_are_config_errors_naming_api_key_env(kind, url):
    with pytest.raises(ConfigError) as caught:
        kind(base_url=url, model="m")
    message = str(caught.value)
    assert "option 'base_url'" in message and "api_key_env" in message
    assert "5f3a" not in message  # the message does not repeat what it refuses to record


def test_chat_image_needs_base_url_and_model():
    with pytest.raises(ConfigError, match="option 'base_url' is required; option 'model' is required"):
        ChatImage()


def test_registered_as_generators():
    assert registry.get("generators", "openai-images") is OpenAIImages
    assert registry.get("generators", "chat-image") is ChatImage
    assert not OpenAIImages.supports_img2img and not OpenAIImages.supports_negative_prompt


# --- the key never leaves ---------------------------------------------------------------------------------

def test_the_key_never_appears_in_errors_extras_or_identity(api, cdn):
    """The server echoes the Authorization header everywhere it can; none of it may reach a result."""
    echo = f"your key {SECRET} is invalid"
    api.script("item-01", status(401, echo))
    api.script("item-02", default=status(500, echo))
    api.script("item-03", reply({"created": 1, "note": echo}))
    api.script("item-04", images_ok(b64_json=b64(png(pattern("a"))), revised_prompt=echo))
    api.script("item-05", images_ok(url=cdn.origin + "/missing.png"))
    cdn.files["/missing.png"] = status(403, echo)
    gen = make(api, max_retries=1)
    results = gen.generate([req(f"item-{i:02d}") for i in range(1, 6)])
    assert [r.ok for r in results] == [False, False, False, True, False]
    assert "[API key]" in results[0].error and "check the API key in $" + KEY_ENV in results[0].error
    api.script("item-06", chat_ok({"content": echo}))
    chat_results = chat(api).generate([req("item-06")])
    outputs = json.dumps([[r.error, r.extra] for r in results + chat_results]) + json.dumps(gen.identity())
    assert SECRET not in outputs
    assert "[API key]" in outputs
    assert KEY_ENV not in json.dumps(gen.identity())
