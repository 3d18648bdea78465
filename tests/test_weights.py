"""Weight resolution and safe checkpoint reading, shared by every model scorer."""

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
    with pytest.raises(WeightsError, match=r"'missing.safetensors' not found at .*missing.safetensors"):
        r.file(src, "missing.safetensors")
    with pytest.raises(WeightsError, match=r"cannot get model.safetensors of org/other@v1.*huggingface-cli download "
                                           r"org/other model.safetensors --revision v1"):
        r.file(WeightsSource(repo="org/other", revision="v1"), "model.safetensors")


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
