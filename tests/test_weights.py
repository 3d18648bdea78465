"""Weight resolution and safe checkpoint reading, shared by every model scorer."""

import functools
import hashlib
import shutil

import pytest

torch = pytest.importorskip("torch")

from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import Resolver, WeightsError, WeightsSource, load_state_dict  # noqa: E402


@pytest.mark.parametrize("name", ["clip", "imagereward", "hpsv2"])
def test_record_identity_follows_content_not_location(tmp_path, name):
    from tiny import builders

    opts = builders()[name](tmp_path / "a")
    ident = get("scorers", name)(**opts).identity()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = {k: v.replace(str(tmp_path / "a"), str(tmp_path / "b")) if isinstance(v, str) else v
             for k, v in opts.items()}
    assert moved != opts
    assert get("scorers", name)(**moved).identity() == ident


def test_resolver_hashes_local_files_and_names_missing_ones(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"abc")
    r = Resolver(offline=True)
    src = WeightsSource(repo="org/model", local=str(tmp_path))
    assert r.sha256(src, "w.bin") == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(WeightsError) as missing:
        r.file(src, "missing.safetensors")
    assert str(missing.value) == (f"missing weight files: missing.safetensors not found in {tmp_path} (put the files "
                                  f"there: hf download org/model missing.safetensors --local-dir {tmp_path}, or fix "
                                  "the path)")
    with pytest.raises(WeightsError, match=r"not in the Hugging Face cache: org/other@v1: model.safetensors .*"
                                           r"`hf download org/other model.safetensors --revision v1`"):
        r.file(WeightsSource(repo="org/other", revision="v1"), "model.safetensors")


PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_REV = "dc2ed378e35ed7046987c680120123faa75b4559"
LAION_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
LAION_H_REV = "94a64189c3535c1cb44acfcccd7b0908c1c8eb23"


def test_every_missing_file_is_named_at_once_with_the_hf_download_commands(tmp_path):
    """PickScore reads two repos; all five files are named in one error, one exact command per repo, whether
    the record key (identity) or loading asks first. HF_HUB_OFFLINE is set for the tests (conftest)."""
    commands = (f"`hf download {PICKSCORE_MODEL} config.json model.safetensors --revision {PICKSCORE_REV}` and "
                f"`hf download {LAION_H} vocab.json merges.txt preprocessor_config.json --revision {LAION_H_REV}`")
    for ask in ("identity", "load"):
        with pytest.raises(WeightsError) as exc:
            getattr(get("scorers", "pickscore")(), ask)()
        msg = str(exc.value)
        assert msg.startswith(f"missing weight files: not in the Hugging Face cache: "
                              f"{PICKSCORE_MODEL}@{PICKSCORE_REV}: config.json, model.safetensors; "
                              f"{LAION_H}@{LAION_H_REV}: vocab.json, merges.txt, "
                              "preprocessor_config.json (hub access is off: HF_HUB_OFFLINE")
        assert commands in msg and "\n" not in msg


def test_a_local_folder_and_the_hub_are_named_together(tmp_path):
    """ImageReward with an empty folder: the folder's two files and the tokenizer's hub file, all in one error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError) as exc:
        get("scorers", "imagereward")(weights=str(empty)).identity()
    msg = str(exc.value)
    assert msg.startswith(f"missing weight files: ImageReward.pt, med_config.json not found in {empty} (put the files "
                          f"there: hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir {empty}, "
                          "or fix the path); not in the Hugging Face cache: google-bert/bert-base-uncased@main: "
                          "vocab.txt (")
    assert "`hf download google-bert/bert-base-uncased vocab.txt`" in msg


def test_an_unreachable_hub_is_found_with_one_request_and_files_come_from_the_cache(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, one request to the hub endpoint (here a closed local port) decides: the hub
    library is then asked for cached files only, never left to retry a dead connection per file."""
    import socket

    import huggingface_hub

    from aesthetic_audit.scorers import _weights

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read by the hub at import
    probes, asked = [], []
    real_probe = _weights.hub_problem.__wrapped__

    def probe(endpoint):
        probes.append(endpoint)
        return real_probe(endpoint)

    def download(repo, filename, *, local_files_only, **kw):
        asked.append(local_files_only)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(_weights, "hub_problem", functools.lru_cache(maxsize=None)(probe))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(WeightsError, match=r"the hub is unreachable \(ConnectError: .*\); set HF_HUB_OFFLINE=1") as exc:
        get("scorers", "pickscore")().identity()
    assert "config.json, model.safetensors" in str(exc.value) and "preprocessor_config.json" in str(exc.value)
    assert probes == [f"http://127.0.0.1:{port}"] and asked == [True] * 5

    # a hub that answers is asked normally, and its failure is named
    monkeypatch.setattr(_weights, "hub_problem", lambda endpoint: None)
    asked.clear()
    with pytest.raises(WeightsError, match=r"\(the download failed: LocalEntryNotFoundError: not cached\)"):
        get("scorers", "pickscore")().identity()
    assert asked == [False] * 5


def test_damaged_weight_files_are_errors_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    state = {"layer.weight": torch.arange(4096.0).reshape(64, 64)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[:len(data) // 2])  # an interrupted download
        with pytest.raises(WeightsError, match=rf"cannot read {tmp_path / f'cut-{name}'} .*damaged or incomplete"):
            load_state_dict(tmp_path / f"cut-{name}", allow_pickle=True)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)  # not even a header
    with pytest.raises(WeightsError, match=r"junk.safetensors as safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_a_damaged_file_read_by_transformers_fails_the_scorer_not_the_process(tmp_path):
    from tiny import builders

    opts = builders()["blip-itm"](tmp_path)
    weights = tmp_path / "blip-itm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=rf"cannot build the model from .*{weights}"):
        get("scorers", "blip-itm")(**opts, device="cpu").load()


def test_convert_keeps_the_checkpoints_companion_files_so_the_folder_loads(tmp_path, cli):
    """The README recipe: ImageReward.pt + med_config.json as downloaded -> a folder the scorer takes as it is."""
    from PIL import Image
    from tiny import builders

    official = builders()["imagereward"](tmp_path)  # ImageReward.pt, med_config.json, vocab.txt
    folder = tmp_path / "imagereward"
    code, _, err = cli("convert", folder / "ImageReward.pt", "-o", tmp_path / "converted")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == [
        "ImageReward.safetensors", "med_config.json", "vocab.txt"]
    assert (tmp_path / "converted" / "med_config.json").read_bytes() == (folder / "med_config.json").read_bytes()
    item = [(Image.new("RGB", (40, 32), (200, 40, 90)), "a photo of a cat")]
    converted = get("scorers", "imagereward")(weights=str(tmp_path / "converted"), device="cpu")  # no allow_pickle
    assert converted.score(item)[0].score == pytest.approx(
        get("scorers", "imagereward")(**official, device="cpu").score(item)[0].score, abs=1e-6)

    # a different file of the same name in the output folder is never overwritten, and nothing is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "med_config.json").write_text("{}")
    code, _, err = cli("convert", folder / "ImageReward.pt", "-o", other)
    assert code == 2 and f"{other / 'med_config.json'} exists and differs" in err
    assert sorted(p.name for p in other.iterdir()) == ["med_config.json"]


def test_pickles_need_opt_in_and_are_read_weights_only(tmp_path):
    state = {"layer.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match="pickle checkpoint.*allow_pickle"):
        load_state_dict(tmp_path / "ckpt.pt")
    got = load_state_dict(tmp_path / "ckpt.pt", allow_pickle=True, key="state_dict")
    assert torch.equal(got["layer.weight"], state["layer.weight"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_state_dict(tmp_path / "evil.pt", allow_pickle=True)
    with pytest.raises(WeightsError, match="expected a 'model' entry holding the state dict; found \\['state_dict'\\]"):
        load_state_dict(tmp_path / "ckpt.pt", allow_pickle=True, key="model")


def test_cli_convert_pickle_to_safetensors(tmp_path, cli):
    from safetensors.torch import load_file

    state = {"mlp.layers.0.weight": torch.randn(3, 2)}
    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    code, _, err = cli("convert", tmp_path / "ckpt.pt", "-o", tmp_path / "out", "--key", "state_dict")
    assert code == 0 and "ckpt.safetensors" in err
    assert torch.equal(load_file(tmp_path / "out" / "ckpt.safetensors")["mlp.layers.0.weight"], state["mlp.layers.0.weight"])
    code, _, err = cli("convert", tmp_path / "nope.pt", "-o", tmp_path / "x.safetensors")
    assert code == 2 and "no checkpoint file" in err


def test_cli_convert_openclip_checkpoint_loads_as_hpsv2(tmp_path, cli):
    from PIL import Image
    from tiny import builders

    opts = builders()["hpsv2"](tmp_path / "official")
    pt = next((tmp_path / "official").rglob("*.pt"))
    code, _, err = cli("convert", pt, "-o", tmp_path / "converted", "--openclip", "--vision-head-width", 80)
    assert code == 0
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(next((tmp_path / "official").rglob(name)), tmp_path / "converted" / name)
    img = Image.new("RGB", (40, 30), (120, 30, 200))
    official = get("scorers", "hpsv2")(**opts).score([(img, "a cat")])[0].score
    converted = get("scorers", "hpsv2")(weights=str(tmp_path / "converted")).score([(img, "a cat")])[0].score
    assert converted == pytest.approx(official, abs=1e-6)


LOCATION_OPTIONS = ("weights", "clip_weights", "processor_weights", "base")


@pytest.mark.parametrize("name", ["clip", "pickscore", "laion-aesthetic", "hpsv2", "hpsv2.1", "imagereward",
                                  "blip-itm", "hpsv3"])
def test_hub_cache_and_local_folder_give_one_identity(tmp_path, monkeypatch, name):
    """The same bytes read from the hub cache (every file from its default repo) or from local folders (where
    tokenizers sit next to the weights, with no repo named) must key records the same way."""
    from aesthetic_audit.scorers._weights import Resolver
    from tiny import builders

    opts = builders()[name](tmp_path)
    found: dict[str, list] = {}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    asked = []

    def hub(self, source, filename):  # a warm hub cache holding the built files
        asked.append((source.repo, filename))
        (path,) = found[filename]
        return path

    monkeypatch.setattr(Resolver, "_hub", hub)
    local = get("scorers", name)(**opts).identity()
    assert asked == []
    from_hub = get("scorers", name)(**{k: v for k, v in opts.items() if k not in LOCATION_OPTIONS}).identity()
    assert asked and all(repo for repo, _ in asked)
    assert from_hub == local
    if name == "clip":  # a local processor folder names no repo at all
        assert get("scorers", name)(**opts, processor_weights=opts["weights"]).identity() == local


def test_converted_files_get_the_umask_mode_not_owner_only(tmp_path):
    """safetensors writes 0600; a converted model in a shared folder must stay readable by the group."""
    import os

    import torch

    from aesthetic_audit.scorers._weights import convert_to_safetensors

    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, src)
    old = os.umask(0o022)
    try:
        out = convert_to_safetensors(src, tmp_path / "out")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
