"""`judge --judges vlm` and `labels` on a local model folder, through the CLI users call."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from aesthetic_audit.images.decode import decode_image  # noqa: E402
from aesthetic_audit.judges.vlm import VLMJudge  # noqa: E402
from aesthetic_audit.dimensions import load_catalogue  # noqa: E402
from aesthetic_audit.pipeline import Run  # noqa: E402
from aesthetic_audit.store import RunStore  # noqa: E402
from tiny.qwen_vl import build  # noqa: E402


def test_vlm_judge_and_labeller_on_a_local_folder(tmp_path, cli):
    folder = build(tmp_path / "judge", "qwen3_vl")
    rng = np.random.default_rng(3)
    lines = ["image_o,image_a,p_o,p_a,dims"]
    for i in range(2):
        for side in "oa":
            Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}{side}.png")
        lines.append(f"{i}o.png,{i}a.png,A cat {i}.,A blurry cat {i}.,clarity")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert cli("import", run, tmp_path / "pairs.csv")[0] == 0
    opts = {"model": str(folder), "device": "cpu", "dtype": "fp32", "image_size": 64, "dims": ["clarity", "emotion"]}
    sets = [a for k, v in opts.items() for a in ("--set", f"judge.options.vlm.{k}={v}".replace("'", ""))]
    code, _, err = cli("judge", run, "--judges", "vlm", *sets)
    assert code == 0, err
    recs = list(RunStore(run).records("judge"))
    assert len(recs) == 4
    # the same judge built in the test gives the same J (the stage adds nothing, loses nothing)
    judge = VLMJudge(**opts)
    judge.prepare(load_catalogue())
    store = RunStore(run)
    for rec in recs:
        direct = judge.judge([decode_image(store.image_path(rec.data["image"]))], ["clarity", "emotion"])[0]
        for d in ("clarity", "emotion"):
            assert rec.data["scores"][d] == pytest.approx(direct.scores[d], abs=1e-6)
            p = rec.data["probs"][d]
            assert rec.data["scores"][d] == pytest.approx(p[1] + 2 * p[2], abs=1e-9) and sum(p) == pytest.approx(1)
        assert str(folder) in rec.data["judge_desc"]
    # a random-weight model answers no JSON: every pair is a failed record saying so, and the run goes on
    lab = ["--set", f"labels.options.vlm.model={folder}", "--set", "labels.options.vlm.device=cpu",
           "--set", "labels.options.vlm.max_reasks=0", "--set", "labels.options.vlm.max_tokens=4",
           "--set", "labels.options.vlm.image_size=64"]
    code, _, err = cli("labels", run, "--labellers", "vlm", *lab)
    assert code == 1 and "Traceback" not in err
    failed = list(RunStore(run).records("labels", status="failed"))
    assert len(failed) == 2 and all("no JSON object" in r.error and r.item.startswith("vlm:") for r in failed)
    source = Run.open(run).analyze()["label_sources"]["sources"]["vlm:vlm"]  # still listed, with its failures
    assert (source["n"], source["failed"]) == (0, 2) and str(folder) in source["backend"]
