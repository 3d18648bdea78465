"""The Ray engine gives the local engine's records, in the local engine's order, for every stage; a lost
worker loses only its batches, which a rerun computes; a missing extra, a backend that cannot load and a
bad ``ray`` config are one-line errors.

One local Ray (2 CPUs) serves the whole module: the engine uses a Ray already running in the process and
leaves it running. Runs are built once per module and copied per test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_generator
from aesthetic_audit.config import load_config
from aesthetic_audit.engine import Job
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.hashing import bytes_hash
from aesthetic_audit.pipeline import Run
from aesthetic_audit.store import Record, RunStore

# The demo's edited photos, small: 9 photos x 1 draw x 2 strengths = 18 pairs, 27 distinct images.
EDIT = {"images.editor.pairs_per_photo": 1, "images.editor.strengths": [0.5, 1.0], "images.editor.max_side": 96}
SCORERS = ["composite", "brisque", "nsfw", "intent-aware"]
GEN_PAIRS = [("A red bicycle against a wall.", "A blurry, smeared red bicycle against a wall.", ["clarity"]),
             ("A bowl of oranges.", "A bowl of oranges in murky, clashing colours.", ["color aesthetic"]),
             ("Two dogs on a beach.", "Two dogs on a beach, underexposed and dark.", ["color brightness"])]


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    # Workers import by name from the installed package only; the test helpers they run travel by value.
    ray.cloudpickle.register_pickle_by_value(fake_generator)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # The fake generator is a plugin every worker has, as an installed one would be: workers import it from
    # tests/ and register it as they start (actors build their backend from the run's config).
    runtime_env = {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)},
                   "worker_process_setup_hook": "fake_generator.register_fake"}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, configure_logging=False,
             runtime_env=runtime_env)
    yield ray
    ray.shutdown()


def rows(run: Path) -> list[tuple]:
    """Every record of a run as stored, in the order it was written."""
    with sqlite3.connect(f"file:{run / 'records.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT key, stage, item, status, data, error FROM records ORDER BY rowid").fetchall()


def of(run_rows: list[tuple], stage: str, scorer: str | None = None) -> list[tuple]:
    return [r for r in run_rows if r[1] == stage and (scorer is None or json.loads(r[4]).get("scorer") == scorer)]


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def on_ray(run_dir: Path, **overrides) -> Run:
    return Run.open(run_dir, overrides={"engine": "ray", "ray.workers": 1, "ray.images": "shared", **overrides})


@pytest.fixture(scope="module")
def edited(tmp_path_factory) -> Path:
    run = Run.open(tmp_path_factory.mktemp("edited") / "run", overrides=EDIT)
    assert run.edit().new == 18
    return run.store.root


@pytest.fixture(scope="module")
def local(edited, tmp_path_factory) -> list[tuple]:
    """The local engine's records: the default scorers, then the classical judge."""
    run = Run.open(copy(edited, tmp_path_factory.mktemp("local") / "run"))
    run.score()
    run.judge(["classical"])
    assert run.exit_code() == 0
    got = rows(run.store.root)
    assert [len(of(got, "score", s)) for s in SCORERS] == [27, 27, 27, 54] and len(of(got, "judge")) == 27
    return got


def test_score_on_ray_stores_the_local_records_in_the_local_order(ray, edited, local, tmp_path):
    run = on_ray(copy(edited, tmp_path / "shared"), **{"score.chunk_size": 8})
    summaries = run.score()
    run.close()
    assert ray.is_initialized()  # the engine leaves a Ray it did not start running
    assert [(s.stage, s.new, s.failed, s.lost) for s in summaries] == \
        [(f"score:{s}", n, 0, 0) for s, n in zip(SCORERS, (27, 27, 27, 54))]
    assert rows(run.store.root) == [r for r in local if r[1] != "judge"]

    # two workers and chunks of 4: batches may finish out of order, and are written in planned order
    run = on_ray(copy(edited, tmp_path / "send"), **{"ray.images": "send", "ray.workers": 2, "score.chunk_size": 4})
    run.score(["brisque"])
    run.close()
    assert of(rows(run.store.root), "score") == of(local, "score", "brisque")


def test_stored_answers_are_written_on_the_driver_without_starting_a_pool(ray, edited, local, tmp_path,
                                                                          monkeypatch):
    """The composite scorer answers from the judge stage's records: on Ray it starts no actor for them."""
    from aesthetic_audit.engine.ray_engine import RayEngine

    run = Run.open(copy(edited, tmp_path / "run"))
    run.judge(["classical"])

    def no_pool(*args):
        raise AssertionError("a pool was started for stored answers")

    monkeypatch.setattr(RayEngine, "_start", no_pool)
    run = on_ray(run.store.root, **{"score.chunk_size": 8})
    (summary,) = run.score(["composite"])
    run.close()
    assert (summary.new, summary.failed) == (27, 0)
    assert of(rows(run.store.root), "score") == of(local, "score", "composite")


def test_a_worker_running_other_code_refuses_in_one_line(tmp_path):
    from aesthetic_audit import __version__
    from aesthetic_audit.engine.ray_engine import Worker, code_digest

    job = Job("score:pid", Pid(), pid_batch, no_images)
    payload = {"job": job, "version": __version__, "code": code_digest(), "hook": None, "folder": None}
    assert Worker(payload).run([("k", "item 1.0")], {})[0] == "ok"
    reply = Worker({**payload, "code": "0" * 12}).run([("k", "item 1.0")], {})
    assert reply[:2] == ("error", "AuditError") and "\n" not in reply[2]
    assert f"code {code_digest()}) is not the driver's ({__version__}, code 000000000000)" in reply[2]


def test_the_classical_judge_on_ray_equals_local(ray, edited, local, tmp_path):
    run = on_ray(copy(edited, tmp_path / "run"), **{"judge.batch_size": 8})
    (summary,) = run.judge(["classical"])
    run.close()
    assert (summary.new, summary.failed, summary.lost) == (27, 0, 0)
    assert of(rows(run.store.root), "judge") == of(local, "judge")


def _darker(body: dict) -> dict:
    """The VLM's answer: the darker of the two images shown (so either engine gets the same answers)."""
    from fake_vlm import chat

    urls = [p["image_url"]["url"] for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
    means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))).mean()
             for u in urls]
    return chat(json.dumps({"selection": int(means[1] < means[0])}))


def test_vlm_labels_on_ray_equal_local_with_workers_calling_the_endpoint(ray, edited, tmp_path):
    from fake_vlm import FakeVLM

    with FakeVLM() as server:
        server.defaults["*"] = _darker
        vlm = {"labels.options.vlm": {"url": server.base_url, "model": "m", "both_orders": True},
               "labels.batch_size": 4}
        want = Run.open(copy(edited, tmp_path / "local"), overrides=vlm)
        (summary,) = want.labels(["vlm"])
        assert (summary.new, summary.failed) == (18, 0)
        asked = len(server.received)
        run = on_ray(copy(edited, tmp_path / "ray"), **vlm)
        (summary,) = run.labels(["vlm"])
        run.close()
    assert (summary.new, summary.failed, summary.lost) == (18, 0, 0)
    assert asked == 36 and len(server.received) == 72  # both orders of 18 pairs, by each engine
    got = rows(run.store.root)
    assert of(got, "labels") == of(rows(want.store.root), "labels") and len(of(got, "labels")) == 18


@pytest.fixture
def fake():
    yield fake_generator.register_fake()
    fake_generator.unregister_fake()


def _with_prompts(folder: Path) -> Path:
    folder.mkdir()
    pairs = folder / "pairs.jsonl"  # item names carry the file's name: the same in both runs
    pairs.write_text("".join(json.dumps({"p_o": o, "p_a": a, "dims": d}) + "\n" for o, a, d in GEN_PAIRS))
    run = Run.open(folder / "run")
    run.prompts(import_path=pairs)
    return run.store.root


def test_generate_on_ray_sends_the_images_back_and_stores_the_local_records(ray, fake, tmp_path):
    generate = {"images.generate.generators": [fake_generator.NAME]}
    want = Run.open(_with_prompts(tmp_path / "local"), overrides=generate)
    assert [s.new for s in want.generate()] == [3]
    run = on_ray(_with_prompts(tmp_path / "ray"), **{"ray.images": "send", **generate})
    (summary,) = run.generate()
    run.close()
    assert (summary.new, summary.failed, summary.lost) == (3, 0, 0)
    assert fake.calls == [1] * 6  # the driver's generator rendered only the local run's pairs
    got = of(rows(run.store.root), "images")
    assert got == of(rows(want.store.root), "images") and len(got) == 3
    shas = {json.loads(r[4])[side] for r in got for side in ("image_o", "image_a")}
    assert len(shas) == 6
    for sha in shas:  # stored by the driver under their content hash, as the local run stored them
        data = run.store.image_path(sha).read_bytes()
        assert bytes_hash(data) == sha and want.store.image_path(sha).read_bytes() == data


def test_a_killed_worker_loses_its_batches_and_a_rerun_computes_them(ray, edited, local, tmp_path, monkeypatch):
    mark = tmp_path / "mark"
    monkeypatch.setenv("AESTHETIC_AUDIT_KILL_WORKER", f"{mark}:2")
    run_dir = copy(edited, tmp_path / "run")
    run = on_ray(run_dir, **{"ray.max_retries": 0, "score.chunk_size": 4})
    (summary,) = run.score(["brisque"])
    run.close()
    assert mark.exists()
    assert summary.lost > 0 and summary.failed == 0
    assert summary.new == 27 - summary.lost and run.exit_code() == 1
    first = of(rows(run_dir), "score")
    assert len(first) == 27 - summary.lost and all(r[3] == "ok" for r in first)

    monkeypatch.delenv("AESTHETIC_AUDIT_KILL_WORKER")
    run = on_ray(run_dir, **{"score.chunk_size": 4})
    (summary,) = run.score(["brisque"])
    run.close()
    assert (summary.new, summary.cached, summary.lost, run.exit_code()) == (27 - len(first), len(first), 0, 0)
    got = of(rows(run_dir), "score")
    assert len({r[0] for r in got}) == len(got) == 27
    assert sorted(got) == sorted(of(local, "score", "brisque"))


def test_a_killed_worker_within_max_retries_costs_nothing(ray, edited, local, tmp_path, monkeypatch):
    mark = tmp_path / "mark"
    monkeypatch.setenv("AESTHETIC_AUDIT_KILL_WORKER", f"{mark}:2")
    run = on_ray(copy(edited, tmp_path / "run"), **{"ray.max_retries": 2, "score.chunk_size": 4})
    (summary,) = run.score(["brisque"])
    run.close()
    assert mark.exists()
    assert (summary.new, summary.failed, summary.lost, run.exit_code()) == (27, 0, 0, 0)
    assert of(rows(run.store.root), "score") == of(local, "score", "brisque")


def test_without_the_ray_extra_the_command_names_it_and_stores_nothing(edited, tmp_path, monkeypatch, cli):
    run = copy(edited, tmp_path / "run")
    before = rows(run)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    code, out, err = cli("-q", "score", run, "--engine", "ray")
    assert code == 2 and "Traceback" not in err
    named = [line for line in err.splitlines() if "pip install 'aesthetic-audit[ray]'" in line]
    assert len(named) == 1 and "Ray engine" in named[0]
    assert rows(run) == before


def test_a_scorer_that_cannot_load_on_a_worker_fails_as_it_does_locally(ray, edited, tmp_path, capsys):
    options = {"score.options": {"imagereward": {"weights": str(tmp_path / "no-such-folder")}}}
    want = Run.open(copy(edited, tmp_path / "local"), overrides=options)
    expected = [s.line() for s in want.score(["imagereward", "composite"])]
    run = on_ray(copy(edited, tmp_path / "ray"), **options)
    summaries = run.score(["imagereward", "composite"])
    run.close()
    assert [s.line() for s in summaries] == expected
    assert expected[1] == "score:composite: 27 items, 27 new, 0 cached, 0 failed"
    assert run.errors == want.errors and len(run.errors) == 1 and "\n" not in run.errors[0]
    assert run.errors[0].startswith("scorer imagereward: missing weight files: ")
    assert run.exit_code() == want.exit_code() == 1
    assert rows(run.store.root) == rows(want.store.root)  # the backend's failure record included
    (failure,) = of(rows(run.store.root), "backend")
    assert failure[2:4] == ("scorer imagereward", "failed")
    assert "Traceback" not in capsys.readouterr().err


def test_ray_config_checks_backend_names_and_resolves_each_backends_resources(ray):
    for key in ("bogus", "score:", "tokenize:clip"):
        with pytest.raises(ConfigError) as exc:
            load_config(None, {"ray.backends": {key: {"workers": 1}}})
        assert repr(key) in str(exc.value) and "\n" not in str(exc.value)
    from aesthetic_audit.engine.ray_engine import RayEngine

    config = load_config(None, {"ray.workers": 3, "ray.num_cpus": 2, "ray.num_gpus": 0.25,
                                "ray.backends": {"score:brisque": {"workers": 1, "num_cpus": 0.5}}})
    engine = RayEngine(config.ray)
    assert engine._resources("score:brisque") == (1, 0.5, 0.25)
    assert engine._resources("score:nsfw") == (3, 2, 0.25)


class Pid:
    """A backend that is nothing but the process it was loaded in."""

    def load(self):
        self.pid = os.getpid()


def pid_batch(backend: Pid, batch, images, state) -> list[Record]:
    if batch[0][1] == "item 0.0":
        time.sleep(0.5)  # the first batch finishes last: the outcomes still come in planned order
    return [Record(key, "score", item, {"pid": backend.pid, "at": os.getpid()}) for key, item in batch]


def no_images(item) -> list[str]:
    return []


def test_a_pool_has_as_many_worker_processes_as_workers(ray, tmp_path):
    from aesthetic_audit.config import RayConfig
    from aesthetic_audit.engine.ray_engine import RayEngine

    store = RunStore(tmp_path / "run")
    engine = RayEngine(RayConfig(workers=2, images="shared"))
    batches = [[(f"k{i}{j}", f"item {i}.{j}") for j in range(2)] for i in range(6)]
    done = list(engine.map(Job("score:pid", Pid(), pid_batch, no_images), store, batches))
    engine.close()
    assert ray.is_initialized()
    assert [d.batch for d in done] == batches and all(d.lost is None for d in done)
    pids = [r.data["pid"] for d in done for r in d.records]
    assert all(r.data["at"] == r.data["pid"] for d in done for r in d.records)  # loaded where it ran
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_a_pool_the_cluster_cannot_hold_is_refused_before_anything_starts(ray, edited, tmp_path):
    """Ray would leave actors that can never fit waiting for ever, and the stage with them."""
    from aesthetic_audit.errors import EngineError

    run_dir = copy(edited, tmp_path / "run")
    before = rows(run_dir)
    for overrides, words in (({"ray.workers": 3}, "3 worker(s) x 1 CPUs = 3 CPUs, but the Ray cluster has 2"),
                             ({"ray.backends": {"score:brisque": {"num_gpus": 1}}}, "1 GPUs, but the Ray cluster has 0")):
        run = on_ray(run_dir, **overrides)
        with pytest.raises(EngineError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            run.score(["brisque"])
        run.close()
        assert "\n" not in str(err.value) and "score:brisque" in str(err.value)
        assert rows(run_dir) == before  # nothing stored, no backend failure recorded against brisque


def test_engine_settings_apply_to_one_command_and_are_not_stored(ray, edited, tmp_path):
    run = on_ray(copy(edited, tmp_path / "run"), **{"ray.in_flight": 3})  # on_ray sets ray.workers 1
    run.score(["brisque"])
    run.close()
    manifest = run.store.read_manifest()
    assert "engine" not in manifest["config"] and "ray" not in manifest["config"]
    again = Run.open(run.store.root)  # the next command: local, with the default ray section
    assert (again.config.engine, again.config.ray.workers, again.config.ray.in_flight) == ("local", 2, 2)
    assert again.config.hash() == Run.open(copy(edited, tmp_path / "fresh")).config.hash()
