"""The generate stage on a tiny deterministic fake generator: records, seeds, presets and sweeps, batching
and out-of-memory, failures, resume after SIGKILL, the CLI, and export -> render elsewhere -> import."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_generator
from aesthetic_audit.config import CONVENTIONAL_BEAUTY
from aesthetic_audit.hashing import bytes_hash
from aesthetic_audit.images.generators.presets import presets
from aesthetic_audit.store import RunStore
from test_resume import _env, _rows, kill_when

FAKE = fake_generator.NAME
PAIRS = [("A red bicycle against a wall.", "A blurry, smeared red bicycle against a wall.", ["clarity"]),
         ("A bowl of oranges.", "A bowl of oranges in murky, clashing colours.", ["color aesthetic"]),
         ("Two dogs on a beach.", "Two dogs on a beach, underexposed and dark.", ["color brightness"]),
         ("A quiet library.", "A quiet library, flat lighting with no shadows.", ["lighting distinction"])]


@pytest.fixture
def fake():
    yield fake_generator.register_fake()
    fake_generator.unregister_fake()


@pytest.fixture
def test_presets(tmp_path):
    """A config with two presets on the fake backend: one with per-side parameters, one with a LoRA."""
    path = tmp_path / "presets.yaml"
    path.write_text(f"""
images:
  generate:
    presets:
      - name: fake-asym
        description: sides differ, as the study's SD3.5M
        backend: {FAKE}
        params: {{width: 48, height: 48}}
        sides:
          o: {{num_inference_steps: 40, guidance_scale: 4.0}}
          a: {{num_inference_steps: 32, guidance_scale: 6.0, negative_prompt: ""}}
        with_negative: {{true_cfg_scale: 4.0}}
      - name: fake-lora
        description: a LoRA on the fake
        backend: {FAKE}
        options: {{lora: loras/pickscore.safetensors, lora_scale: 1.0}}
""")
    return path


def _prompt_file(tmp_path, pairs=PAIRS):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"p_o": o, "p_a": a, "dims": d}) + "\n" for o, a, d in pairs))
    return path


def _with_prompts(cli, tmp_path, name="run", pairs=PAIRS):
    run = tmp_path / name
    code, _, err = cli("-q", "prompts", run, "--import", _prompt_file(tmp_path, pairs))
    assert code == 0, err
    return run


def _images(run):
    return list(RunStore(run).records("images", status=None))


def _ok(run):
    return [r for r in _images(run) if r.status == "ok"]


def _pixels(run, sha):
    return np.asarray(Image.open(RunStore(run).image_path(sha)))


def test_generated_pairs_carry_the_users_prompts_and_the_generator_and_report_works(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("-q", "generate", run, "--generator", FAKE)
    assert code == 0, err
    store = RunStore(run)
    prompts = {r.key: r.data for r in store.records("prompts")}
    pairs = _ok(run)
    assert len(pairs) == 4
    for r in pairs:
        d = r.data
        assert (d["p_o"], d["p_a"], d["dims"]) == (prompts[d["pair_id"]]["p_o"], prompts[d["pair_id"]]["p_a"],
                                                   prompts[d["pair_id"]]["dims"])
        assert d["model"] == FAKE and d["backend"] == "generate" and d["generator"]["name"] == FAKE
        assert d["image_pair_id"] == r.key and d["label"] is None
    assert {r.data["p_a"] for r in pairs} == {a for _, a, _ in PAIRS}
    assert fake.loads == 1  # loaded once for the stage, not per batch or item
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["backends"][f"generator:{FAKE}"]["identity"]["name"] == FAKE
    assert manifest["config"]["images"]["backend"] == "generate"
    # the downstream stages work on the generated pairs, and the report shows the user's prompts
    assert cli("-q", "judge", run)[0] == 0
    assert cli("-q", "score", run, "--scorers", "composite")[0] == 0
    code, _, err = cli("-q", "report", run, "--set", "analysis.bootstrap=200")
    assert code == 0, err
    html = (run / "report.html").read_text()
    assert "A blurry, smeared red bicycle against a wall." in html
    # a rerun renders nothing and loads nothing
    before = _rows(run)
    code, _, err = cli("generate", run)
    assert code == 0 and "4 cached" in err and fake.loads == 1
    assert [r for r in _rows(run) if r[1] == "images"] == [r for r in before if r[1] == "images"]


def test_same_seed_same_images_and_another_seed_other_images(tmp_path, cli, fake):
    runs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        run = _with_prompts(cli, tmp_path, name)
        assert cli("-q", "generate", run, "--generator", FAKE, "--seed", seed)[0] == 0
        runs[name] = run
    rows = {n: [r for r in _rows(run) if r[1] == "images"] for n, run in runs.items()}
    assert len(rows["a"]) == 4 and rows["a"] == rows["b"]
    images = {n: {(r.data["pair_id"], r.data["image_o"], r.data["image_a"]) for r in _ok(run)} for n, run in runs.items()}
    by_pair = {n: {p: (o, a) for p, o, a in v} for n, v in images.items()}
    assert set(by_pair["a"]) == set(by_pair["c"])  # the same prompt pairs...
    assert all(set(by_pair["a"][p]).isdisjoint(by_pair["c"][p]) for p in by_pair["a"])  # ...no image alike


@pytest.mark.parametrize("paired", [True, False])
def test_paired_seeds_as_configured(tmp_path, cli, fake, paired):
    run = _with_prompts(cli, tmp_path)
    # An image that depends on the seed and parameters only: I_o equals I_a exactly when the seeds are shared.
    code, _, err = cli("-q", "generate", run, "--generator", FAKE, "--set",
                       f"images.generate.options.{FAKE}.ignore_prompt=true", "--set",
                       f"images.generate.paired_seeds={str(paired).lower()}")
    assert code == 0, err
    pairs = _ok(run)
    assert len(pairs) == 4
    for r in pairs:
        seeds = r.data["seeds"]
        assert (seeds["o"] == seeds["a"]) is paired
        assert (r.data["image_o"] == r.data["image_a"]) is paired
    assert len({r.data["seeds"]["o"] for r in pairs}) == 4  # and every prompt pair its own seed


def test_per_side_parameters_of_a_preset_are_used_and_recorded(tmp_path, cli, fake, test_presets):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-asym")
    assert code == 0, err
    want = {"o": {"num_inference_steps": 40, "guidance_scale": 4.0, "width": 48, "height": 48},
            "a": {"num_inference_steps": 32, "guidance_scale": 6.0, "width": 48, "height": 48}}
    p_os, p_as = {o for o, _, _ in PAIRS}, {a for _, a, _ in PAIRS}
    assert {json.dumps(r.params, sort_keys=True) for r in fake.requests if r.prompt in p_os} == \
        {json.dumps(want["o"], sort_keys=True)}
    assert {json.dumps(r.params, sort_keys=True) for r in fake.requests if r.prompt in p_as} == \
        {json.dumps(want["a"], sort_keys=True)}
    assert {r.negative_prompt for r in fake.requests if r.prompt in p_as} == {""}
    assert {r.negative_prompt for r in fake.requests if r.prompt in p_os} == {None}
    for r in _ok(run):
        assert r.data["params"] == {"o": want["o"], "a": {**want["a"], "negative_prompt": ""}}
        assert r.data["model"] == "fake-asym" and r.data["generator"]["preset"] == "fake-asym"
    # a side can be overridden per run: p_a at p_o's steps gives other keys and other images
    code, _, err = cli("-q", "generate", run, "--set", "images.generate.options.fake-asym.sides.a.num_inference_steps=40")
    assert code == 0, err
    assert len(_ok(run)) == 8


def test_the_report_shows_each_generators_settings_and_asymmetric_sides(tmp_path, cli, fake, test_presets):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-asym", "--generator", FAKE)
    assert code == 0, err
    code, _, err = cli("-q", "report", run, "--set", "analysis.bootstrap=100")
    assert code == 0, err
    section = (run / "report.html").read_text().split("<h2>Generators</h2>", 1)[1].split("<h2>", 1)[0]
    rows = {row.split("</td>", 1)[0].rsplit(">", 1)[1]: row for row in section.split("<tr>")[2:]}
    assert set(rows) == {"fake-asym", FAKE}
    assert "steps 40, guidance 4.0" in rows["fake-asym"] and "steps 32, guidance 6.0, negative &#x27;&#x27;" \
        in rows["fake-asym"] and "<b>asymmetric</b>" in rows["fake-asym"]
    assert "asymmetric" not in rows[FAKE] and "same" in rows[FAKE]


def test_a_lora_scale_sweep_gives_one_generator_per_value(tmp_path, cli, fake, test_presets):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-lora", "--generator", FAKE,
                       "--set", "images.generate.sweep.lora_scale=[0, 0.5, 1]")
    assert code == 0, err
    pairs = _ok(run)
    models = {}
    for r in pairs:
        models.setdefault(r.data["model"], []).append(r)
    # the fake has no LoRA and runs once; the preset runs once per scale
    assert sorted(models) == [FAKE, "fake-lora@lora_scale=0", "fake-lora@lora_scale=0.5", "fake-lora@lora_scale=1"]
    assert all(len(v) == 4 for v in models.values())
    assert [models[f"fake-lora@lora_scale={s}"][0].data["generator"]["options"]["lora_scale"] for s in ("0", "0.5", "1")] \
        == [0, 0.5, 1]
    per_scale = [{(r.data["pair_id"], r.data["image_a"]) for r in models[f"fake-lora@lora_scale={s}"]}
                 for s in ("0", "0.5", "1")]
    assert all(a.isdisjoint(b) for i, a in enumerate(per_scale) for b in per_scale[i + 1:])
    manifest = json.loads((run / "manifest.json").read_text())["backends"]
    assert manifest["generator:fake-lora@lora_scale=0.5"]["options"]["lora_scale"] == 0.5


def test_the_negative_sweep_puts_the_mitigation_on_the_p_a_side(tmp_path, cli, fake, test_presets):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-asym",
                       "--set", "images.generate.sweep.negative=[null, true, 'glossy, pretty']")
    assert code == 0, err
    by_model = {}
    for r in _ok(run):
        by_model.setdefault(r.data["model"], r)
    from aesthetic_audit.hashing import spec_hash

    custom = f"fake-asym@negative={spec_hash('glossy, pretty')[:8]}"
    assert sorted(by_model) == sorted(["fake-asym@negative=none", "fake-asym@negative=default", custom])
    none, default = by_model["fake-asym@negative=none"].data, by_model["fake-asym@negative=default"].data
    assert none["params"]["a"]["negative_prompt"] == "" and "true_cfg_scale" not in none["params"]["a"]
    assert default["params"]["a"]["negative_prompt"] == CONVENTIONAL_BEAUTY
    assert default["params"]["a"]["true_cfg_scale"] == 4.0
    assert default["params"]["o"] == none["params"]["o"]  # I_o is the model's ordinary render
    assert by_model[custom].data["params"]["a"]["negative_prompt"] == "glossy, pretty"


def test_out_of_memory_halves_the_batch_and_every_item_is_done(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS + [("A cat.", "A cat, blurred.", ["clarity"])])
    code, _, err = cli("generate", run, "--generator", FAKE, "--set", f"images.generate.options.{FAKE}.oom_above=2",
                       "--set", "images.generate.batch_size=8")
    assert code == 0, err
    assert len(_ok(run)) == 5
    # p_o side: 5 at once does not fit, then 2 + 2 + 1; the p_a side keeps the smaller size
    assert fake.calls == [5, 2, 2, 1, 2, 2, 1]
    assert "out of memory with 5 requests per call; trying 2" in err


def test_out_of_memory_at_one_request_fails_the_items(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:3])
    code, _, err = cli("-q", "generate", run, "--generator", FAKE, "--set",
                       f"images.generate.options.{FAKE}.oom_above=0", "--set", "images.generate.batch_size=4")
    assert code == 1
    assert fake.calls == [3, 1, 1, 1]  # the p_a side is never asked for: no pair has an I_o
    failed = _images(run)
    assert len(failed) == 3 and all(r.status == "failed" and "out of memory" in r.error for r in failed)


def test_a_failing_item_and_a_blank_image_are_failed_records_and_the_rest_go_on(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path)
    fake.refuse, fake.blank = {"murky"}, {"Two dogs"}
    code, _, err = cli("-q", "generate", run, "--generator", FAKE, "--set", "images.generate.batch_size=4")
    assert code == 1
    records = {r.data["p_o"]: r for r in _images(run)}
    assert records["A bowl of oranges."].status == "failed"
    assert records["A bowl of oranges."].error == "I_a (p_a): the fake model refused this prompt"
    dogs = records["Two dogs on a beach."]
    assert dogs.status == "failed" and dogs.error.startswith("I_o (p_o): blank image: one flat colour (0, 0, 255)")
    assert dogs.data["model"] == FAKE and dogs.data["pair_id"]
    assert [records[p].status for p in ("A red bicycle against a wall.", "A quiet library.")] == ["ok", "ok"]
    # failed pairs store no images: only the two good pairs' four images are in the run
    assert len(list((run / "images").rglob("*.png"))) == 4
    assert "the fake model refused this prompt" in cli("status", run)[1]
    # without --retry-failed failures stay as they are; with it, and the cause gone, they are rendered
    fake.refuse, fake.blank = set(), set()
    assert cli("-q", "generate", run)[0] == 1 and len(_ok(run)) == 2
    code, _, err = cli("-q", "generate", run, "--retry-failed")
    assert code == 0, err
    assert len(_ok(run)) == 4 and len(_images(run)) == 4  # no failure left behind


def test_an_unreachable_endpoint_stops_the_stage_and_keeps_what_was_made(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("generate", run, "--generator", FAKE, "--set", f"images.generate.options.{FAKE}.down_if=library")
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error")] == \
        ["error: fake endpoint: connection refused 3 times in a row"]
    assert len(_ok(run)) == 3 and len(_images(run)) == 3  # the pairs before it are stored, it is not failed


def test_a_generator_that_cannot_load_is_recorded_and_the_others_run(tmp_path, cli, fake, test_presets):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-asym", "--generator", FAKE,
                       "--set", f"images.generate.options.{FAKE}.unloadable=true")
    assert code == 1
    assert {r.data["model"] for r in _ok(run)} == {"fake-asym"}
    status = cli("status", run)[1]
    assert "backends that could not run" in status and f"generator {FAKE}" in status and "are missing" in status


def test_img2img_of_the_generators_own_i_o(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    code, _, err = cli("-q", "generate", run, "--generator", FAKE, "--set", "images.generate.img2img.enabled=true",
                       "--set", "images.generate.img2img.strength=0")
    assert code == 0, err
    for r in _ok(run):
        # strength 0 keeps I_o: the fake blends by strength, so I_a is I_o exactly
        assert r.data["strength"] == 0 and r.data["image_o"] == r.data["image_a"]
    init = {r.init_image_sha for r in fake.requests if r.init_image is not None}
    assert init == {r.data["image_o"] for r in _ok(run)}


def test_img2img_of_the_runs_imported_pairs(tmp_path, cli, fake):
    rng = np.random.default_rng(3)
    for side in ("o", "a"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"0{side}.png")
    (tmp_path / "m.csv").write_text("image_o,image_a,p_o,p_a,dims\n0o.png,0a.png,A cat.,A blurry cat.,clarity\n")
    run = tmp_path / "run"
    assert cli("-q", "import", run, tmp_path / "m.csv")[0] == 0
    source = _ok(run)[0]
    code, _, err = cli("-q", "generate", run, "--generator", FAKE, "--set", "images.generate.img2img.enabled=true",
                       "--set", "images.generate.img2img.of=pairs")
    assert code == 0, err
    made = [r for r in _ok(run) if r.data["backend"] == "generate"]
    assert len(made) == 1
    d = made[0].data
    assert (d["image_o"], d["p_o"], d["p_a"], d["pair_id"]) == (source.data["image_o"], "A cat.", "A blurry cat.",
                                                               source.data["pair_id"])
    assert d["source_pair"] == source.key and d["strength"] == 0.5 and d["image_a"] != source.data["image_a"]
    assert [r.init_image_sha for r in fake.requests] == [source.data["image_o"]]


def test_generate_resumes_after_sigkill(tmp_path):
    tests = Path(__file__).parent
    code = (f"import sys; sys.path.insert(0, {str(tests)!r}); import fake_generator; fake_generator.register_fake(); "
            "from aesthetic_audit.cli import main; sys.exit(main(sys.argv[1:]))")
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("".join(f"A photo of object number {i}.\n" for i in range(16)))

    def cmd(run, *args):
        return [sys.executable, "-c", code, "-q", *args]

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    subprocess.run(cmd(killed, "prompts", killed, "--source", prompts_file, "-n", "16"), check=True, env=_env(),
                   timeout=120)
    shutil.copytree(killed, clean)
    gen = ["--generator", FAKE, "--set", f"images.generate.options.{FAKE}.delay_s=0.04", "--set",
           "images.generate.batch_size=2"]
    kill_when(cmd(killed, "generate", killed, *gen), killed, at_least=16 + 3)
    partial = len(_ok(killed))
    assert 0 < partial < 16
    subprocess.run(cmd(killed, "generate", killed, *gen), check=True, env=_env(), timeout=120)
    subprocess.run(cmd(clean, "generate", clean, *gen), check=True, env=_env(), timeout=120)
    got, want = _rows(killed), _rows(clean)
    assert len([r for r in want if r[1] == "images" and r[2] == "ok"]) == 16
    assert got == want
    referenced = {json.loads(d)[k] for _, stage, _, d in got if stage == "images" for k in ("image_o", "image_a")}
    assert {p.stem for p in (killed / "images").rglob("*.png")} == referenced


def test_generate_on_a_mistyped_run_creates_nothing(tmp_path, cli):
    code, _, err = cli("generate", tmp_path / "typo", "--generator", "flux-dev")
    assert code == 2 and "does not exist" in err and not (tmp_path / "typo").exists()


def test_a_prompts_only_run_says_to_generate(tmp_path, cli):
    run = _with_prompts(cli, tmp_path)
    for cmd in ("judge", "score", "report"):
        code, _, err = cli(cmd, run)
        assert code == 1 and "4 prompt pairs but no image pairs" in err and f"generate {run} --generator" in err
    empty = tmp_path / "empty"
    RunStore(empty).counts()  # an empty run: a database and no records
    code, _, err = cli("generate", empty, "--generator", "flux-dev")
    assert code == 1 and "no prompt pairs of origin captions, import" in err and f"prompts {empty}" in err
    # `run` makes prompt pairs of origin captions only: a run rendering imported ones says what is missing
    code, _, err = cli("run", empty, "--set", "images.backend=generate", "--set",
                       "images.generate.generators=[flux-dev]", "--set", "images.generate.origins=[import]")
    assert code == 1 and err.count("nothing to do") == 1 and "no prompt pairs of origin import" in err


def test_run_with_the_generate_backend_starts_with_the_prompt_stage(tmp_path, cli, fake):
    run = tmp_path / "fresh"
    code, _, err = cli("-q", "run", run, "--set", "images.backend=generate", "--set", "prompts.n=3", "--set",
                       f"images.generate.generators=[{FAKE}]", "--set", "score.scorers=[composite]",
                       "--set", "analysis.bootstrap=200")
    assert code == 0, err
    prompts = {r.key: r.data for r in RunStore(run).records("prompts")}
    assert len(prompts) == 3 and {d["origin"] for d in prompts.values()} == {"captions"}
    pairs = _ok(run)
    assert sorted(r.data["pair_id"] for r in pairs) == sorted(prompts)
    assert {r.data["p_a"] for r in pairs} == {d["p_a"] for d in prompts.values()}
    assert json.loads((run / "analysis.json").read_text())["n_pairs"] == 3 and (run / "report.html").is_file()
    # an unknown generator stops `run` before the prompt stage writes anything
    other = tmp_path / "other"
    code, _, err = cli("run", other, "--set", "images.backend=generate", "--set", "prompts.n=3", "--set",
                       "images.generate.generators=[flux-devv]")
    assert code == 2 and "unknown generator 'flux-devv'" in err
    assert not other.exists() or list(RunStore(other).records("prompts")) == []


def test_each_record_carries_the_generators_whole_identity(tmp_path, cli, fake, test_presets):
    from aesthetic_audit.hashing import spec_hash

    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    code, _, err = cli("-q", "generate", run, "-c", test_presets, "--generator", "fake-lora")
    assert code == 0, err
    want = fake_generator.FakeGenerator(lora="loras/pickscore.safetensors", lora_scale=1.0).identity()
    assert want["options"]["lora_scale"] == 1.0
    for r in _ok(run):
        assert r.data["generator"]["identity"] == want
        assert r.data["generator"]["identity_hash"] == spec_hash(want)
    # the same name with another setting overwrites the manifest's entry; the earlier records still say
    # what made their images
    code, _, err = cli("-q", "generate", run, "--set", "images.generate.options.fake-lora.lora_scale=0.5")
    assert code == 0, err
    scaled = fake_generator.FakeGenerator(lora="loras/pickscore.safetensors", lora_scale=0.5).identity()
    manifest = json.loads((run / "manifest.json").read_text())["backends"]["generator:fake-lora"]
    assert manifest["identity"] == scaled
    identities = sorted((r.data["generator"]["identity"]["options"]["lora_scale"], r.data["generator"]["identity_hash"])
                        for r in _ok(run))
    assert identities == sorted([(1.0, spec_hash(want))] * 2 + [(0.5, spec_hash(scaled))] * 2)


def test_run_with_the_generate_backend_does_every_stage(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    code, _, err = cli("-q", "run", run, "--set", "images.backend=generate", "--set",
                       f"images.generate.generators=[{FAKE}]", "--set", "score.scorers=[composite]",
                       "--set", "analysis.bootstrap=200")
    assert code == 0, err
    assert len(_ok(run)) == 2
    assert json.loads((run / "analysis.json").read_text())["n_pairs"] == 2


def test_unknown_generators_and_impossible_settings_are_config_errors(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path)
    code, _, err = cli("generate", run, "--generator", "flux-devv")
    assert code == 2 and "unknown generator 'flux-devv'" in err and "flux-dev" in err and "sd35m" in err
    code, _, err = cli("generate", run, "--generator", FAKE, "--set", "images.generate.options.nope.device=cuda")
    assert code == 2 and "unknown generator 'nope'" in err
    code, _, err = cli("generate", run, "--generator", FAKE, "--set", f"images.generate.options.{FAKE}.colour=red")
    assert code == 2 and f"generator {FAKE}: bad options" in err and "colour" in err
    code, _, err = cli("generate", run, "--generator", "gpt-image-1-mini", "--set",
                       "images.generate.img2img.enabled=true")
    assert code == 2 and "cannot do image-to-image" in err
    code, _, err = cli("generate", run, "--generator", "gpt-image-1-mini", "--set",
                       "images.generate.sweep.negative=[null, true]")
    assert code == 2 and "takes no negative prompt" in err
    code, _, err = cli("generate", run)  # no generator anywhere
    assert code == 2 and "no generator given" in err
    assert _images(run) == []


def test_ls_generators_lists_every_preset_with_its_settings():
    code = ("import sys; from aesthetic_audit.cli import main; main(['ls', 'generators']);"
            "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    blocks = {}
    for line in out.splitlines():
        if line and not line.startswith(" ") and not line.endswith(":") and not line.startswith("HEAVY"):
            current = line.split()[0]
            blocks[current] = []
        elif line.startswith(" "):
            blocks[current].append(line.strip())
    table = presets()
    assert len(table) == 10 and set(table) <= set(blocks)
    for name, preset in table.items():
        text = " ".join(blocks[name])
        for side in ("o", "a"):
            params = preset.side(side)
            if "num_inference_steps" in params:
                assert f"steps {params['num_inference_steps']}" in text
                assert f"guidance {params['guidance_scale']}" in text
    assert "p_o side: steps 40, guidance 4.0" in " ".join(blocks["sd35m"])
    assert "p_a side: steps 32, guidance 6.0" in " ".join(blocks["sd35m"])
    assert "lora jieliu/SD3.5M-FlowGRPO-PickScore scale 1" in " ".join(blocks["sd35m-flowgrpo-pickscore"])
    assert {"diffusers", "openai-images"} <= {p.backend for p in table.values()}


def test_presets_build_on_their_backends(monkeypatch):
    from aesthetic_audit.config import load_config
    from aesthetic_audit.images.generators.presets import generator_specs
    from aesthetic_audit.registry import available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # unpinned hub ids are accepted offline (from the cache)
    backends = available("generators")
    for name, preset in presets().items():
        assert name not in backends  # a preset never hides a backend
        (spec,) = generator_specs(load_config(overrides={"images.generate.generators": [name]}).images.generate)
        generator = spec.build()  # every option name and value is one the backend takes; nothing loads
        assert generator.batch_size >= 1 and spec.params["o"] == {k: v for k, v in preset.side("o").items()
                                                                  if k != "negative_prompt"}


def test_option_values_are_checked_by_generate_only(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:1])
    code, _, err = cli("generate", run, "--generator", FAKE, "--set", f"images.generate.options.{FAKE}.size=1")
    assert code == 2 and "error: size must be at least 8" in err and _images(run) == []
    # a value only the generator cares about does not stop other commands (e.g. a run made offline,
    # reported on a machine where the generator could not be built)
    code, _, err = cli("status", run)
    assert code == 0
    code, _, err = cli("judge", run, "--set", f"images.generate.options.{FAKE}.size=1")
    assert code == 1 and "nothing to do" in err


def _noise_png(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def test_export_for_generation_then_import_links_pairs_to_their_prompts(tmp_path, cli):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:3] + [("-5 degrees outside.", "=SUM(A1) a blurry thermometer.",
                                                           ["clarity"])])
    code, _, err = cli("export", run, "--stage", "prompts", "--layout", "generate", "-o", tmp_path / "todo.csv")
    assert code == 0, err
    with open(tmp_path / "todo.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    prompts = {r.key: r.data for r in RunStore(run).records("prompts")}
    assert [r["pair_id"] for r in rows] and set(r["pair_id"] for r in rows) == set(prompts)
    assert all(r["file_o"] == f"{r['pair_id']}_o.png" and r["file_a"] == f"{r['pair_id']}_a.png" for r in rows)
    # render "elsewhere": a folder of files named as the export asks, plus a stray image
    out = tmp_path / "rendered"
    out.mkdir()
    for i, r in enumerate(rows):
        _noise_png(out / r["file_o"], 2 * i)
        _noise_png(out / r["file_a"], 2 * i + 1)
    _noise_png(out / "notes.png", 99)
    (out / "todo.csv").write_text((tmp_path / "todo.csv").read_text())  # the manifest beside them is ignored
    code, _, err = cli("-q", "import", run, out, "--model", "my-generator")
    assert code == 1  # the stray image is a failed row
    pairs = _ok(run)
    assert len(pairs) == 4
    for r in pairs:
        d = r.data
        assert d["pair_id"] in prompts and d["model"] == "my-generator"
        assert (d["p_o"], d["p_a"], d["dims"]) == (prompts[d["pair_id"]]["p_o"], prompts[d["pair_id"]]["p_a"],
                                                   prompts[d["pair_id"]]["dims"])
        want_o = bytes_hash(Image.open(out / f"{d['pair_id']}_o.png").convert("RGB").tobytes())
        assert bytes_hash(_pixels(run, d["image_o"]).tobytes()) == want_o
    (failed,) = [r for r in _images(run) if r.status == "failed"]
    assert failed.item == "notes.png" and "belongs to no prompt pair" in failed.error


def test_a_linked_import_without_a_model_name_warns_naming_model(tmp_path, cli):
    from aesthetic_audit.pipeline import Run

    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    assert cli("export", run, "--stage", "prompts", "--layout", "generate", "-o", tmp_path / "todo.csv")[0] == 0
    with open(tmp_path / "todo.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = tmp_path / "rendered"
    out.mkdir()
    for i, r in enumerate(rows[:1]):
        _noise_png(out / r["file_o"], 2 * i)
        _noise_png(out / r["file_a"], 2 * i + 1)
    summary = Run.open(run, create=False).import_pairs(out)
    assert summary.new == 1 and len(summary.warnings) == 1
    assert "1 image pair(s) linked by pair_id were stored without a model name" in summary.warnings[0]
    assert "--model NAME" in summary.warnings[0] and [r.data["model"] for r in _ok(run)] == [None]
    for i, r in enumerate(rows[1:], 1):
        _noise_png(out / r["file_o"], 2 * i)
        _noise_png(out / r["file_a"], 2 * i + 1)
    code, _, err = cli("import", run, out)  # the CLI says it too, counting only the pairs stored now
    assert code == 0 and "1 new, 1 cached" in err and "1 warnings" in err
    assert "warning" in err.lower() and "1 image pair(s) linked by pair_id were stored without a model name" in err
    code, _, err = cli("import", run, out, "--model", "flux-dev")  # named: nothing new, nothing to warn about
    assert code == 0 and "without a model name" not in err


def test_a_manifest_with_pair_ids_links_and_names_a_pair_id_the_run_lacks(tmp_path, cli):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    code, _, err = cli("export", run, "--stage", "prompts", "--layout", "generate", "--template",
                       "{index:03d}-{side}.png", "-o", tmp_path / "todo.csv")
    assert code == 0, err
    with open(tmp_path / "todo.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["file_o"], r["file_a"]) for r in rows] == [("000-o.png", "000-a.png"), ("001-o.png", "001-a.png")]
    for i, r in enumerate(rows):
        _noise_png(tmp_path / r["file_o"], 2 * i)
        _noise_png(tmp_path / r["file_a"], 2 * i + 1)
    lines = (tmp_path / "todo.csv").read_text().splitlines()
    header = lines[0] + ",model"
    body = [line + ",sdxl-base" for line in lines[1:]] + ["f" * 64 + ",,,,000-o.png,000-a.png,,"]
    (tmp_path / "todo.csv").write_text("\n".join([header, *body]) + "\n")
    code, _, err = cli("-q", "import", run, tmp_path / "todo.csv")
    assert code == 1
    ok = _ok(run)
    assert len(ok) == 2 and {r.data["model"] for r in ok} == {"sdxl-base"}
    assert {r.data["pair_id"] for r in ok} == {r["pair_id"] for r in rows}
    (failed,) = [r for r in _images(run) if r.status == "failed"]
    assert f"pair_id {'f' * 64} matches no prompt pair of this run" in failed.error
    # the prompts in a row must be the prompt pair's own
    (tmp_path / "bad.csv").write_text(f"pair_id,p_a,image_o,image_a\n{rows[0]['pair_id']},something else,"
                                      "000-o.png,000-a.png\n")
    cli("-q", "import", run, tmp_path / "bad.csv")
    bad = [r for r in _images(run) if r.status == "failed" and r.item == "bad.csv:row 1"]
    assert bad and "p_a differs from the p_a of prompt pair" in bad[0].error


def test_export_template_must_name_each_image_apart(tmp_path, cli):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:1])
    for template in ("{pair_id}.png", "{side}.png", "{colour}_{side}.png", "sub/{pair_id}_{side}.png"):
        code, _, err = cli("export", run, "--stage", "prompts", "--layout", "generate", "--template", template,
                           "-o", tmp_path / "x.csv")
        assert code == 2 and "--template" in err, template
    code, _, err = cli("export", run, "--stage", "images", "--layout", "generate", "-o", tmp_path / "x.csv")
    assert code == 2 and "applies to --stage prompts only" in err


def test_a_preset_with_its_model_pointed_at_a_local_folder_renders_through_diffusers(tmp_path, cli):
    pytest.importorskip("diffusers")
    from tiny.diffusion import build_sd3

    folder = build_sd3(tmp_path / "sd35m-local")
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:1])
    opts = "images.generate.options.sd35m"
    args = ["--generator", "sd35m", "--set", f"{opts}.model={folder}", "--set", f"{opts}.device=cpu",
            "--set", f"{opts}.dtype=fp32", "--set", f"{opts}.params={{width: 32, height: 32}}",
            "--set", f"{opts}.sides={{o: {{num_inference_steps: 2}}, a: {{num_inference_steps: 3}}}}"]
    code, _, err = cli("-q", "generate", run, *args)
    assert code == 0, err
    (pair,) = _ok(run)
    # the preset's guidance per side stays; the steps and size are this run's
    assert pair.data["params"] == {"o": {"num_inference_steps": 2, "guidance_scale": 4.0, "width": 32, "height": 32},
                                   "a": {"num_inference_steps": 3, "guidance_scale": 6.0, "width": 32, "height": 32}}
    assert pair.data["model"] == "sd35m" and _pixels(run, pair.data["image_o"]).shape == (32, 32, 3)
    manifest = json.loads((run / "manifest.json").read_text())["backends"]["generator:sd35m"]
    files = manifest["identity"]["model"]["files"]
    assert files["model_index.json"] == bytes_hash((folder / "model_index.json").read_bytes())
    assert manifest["preset"] == "sd35m" and manifest["options"]["model"] == str(folder)
    code, _, err = cli("generate", run)  # the stored config renders nothing new
    assert code == 0 and "1 cached" in err


def test_users_name_their_own_generators_as_presets(tmp_path, cli, fake):
    run = _with_prompts(cli, tmp_path, pairs=PAIRS[:2])
    config = tmp_path / "gen.yaml"
    config.write_text(f"""
images:
  generate:
    generators: [my-small, my-big]
    presets:
      - {{name: my-small, description: the fake at 16 px, backend: {FAKE}, options: {{size: 16}},
         params: {{num_inference_steps: 4}}}}
      - {{name: my-big, description: the fake at 40 px, backend: {FAKE}, options: {{size: 40}},
         sides: {{a: {{num_inference_steps: 8}}}}}}
""")
    code, _, err = cli("-q", "generate", run, "-c", config)
    assert code == 0, err
    sizes = {r.data["model"]: _pixels(run, r.data["image_a"]).shape[0] for r in _ok(run)}
    assert sizes == {"my-small": 16, "my-big": 40}
    big = next(r for r in _ok(run) if r.data["model"] == "my-big")
    assert big.data["params"] == {"o": {}, "a": {"num_inference_steps": 8}} and big.data["generator"]["preset"] == "my-big"
    config.write_text(f"images:\n  generate:\n    presets: [{{name: flux-dev, description: x, backend: {FAKE}}}]\n")
    code, _, err = cli("generate", run, "-c", config)
    assert code == 2 and "'flux-dev' is the name of a built-in preset" in err
    config.write_text("images:\n  generate:\n    presets: [{name: Bad.Name, description: x, backend: y}]\n")
    code, _, err = cli("generate", run, "-c", config)
    assert code == 2 and "images.generate.presets Bad.Name: name:" in err


def test_generate_help_says_the_run_must_exist(capsys):
    from aesthetic_audit.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "created if missing" not in text and "an existing run directory holding prompt pairs" in text
    assert "HF_HUB_OFFLINE=1" in text and "options.NAME.revision" in text


def test_readme_generate_examples_with_hub_presets_pin_or_go_offline():
    """A hub preset without a pinned revision exits 2 while the hub is reachable: every README command
    that builds one must set HF_HUB_OFFLINE=1, pin its revision or point its model at a folder."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    commands = re.sub(r"\\\n\s*", " ", readme).splitlines()
    hub = {name for name, p in presets().items() if p.backend == "diffusers"}
    checked = 0
    for line in commands:
        line = line.split("  #", 1)[0]
        names = set(re.findall(r"--generator (\S+)", line)) & hub
        if "aesthetic-audit generate" not in line or not names:
            continue
        checked += 1
        for name in names:
            assert "HF_HUB_OFFLINE=1 aesthetic-audit" in line or f"options.{name}.revision=" in line \
                or f"options.{name}.model=" in line, line
    assert checked >= 4
    assert "No preset pins a hub" in readme
