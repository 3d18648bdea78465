"""The HTML report: one offline file, escaped text, embedded thumbnails, every section present, the
quotable summary, deterministic charts, the filterable gallery of every pair and the methods."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import pytest
from PIL import Image

from aesthetic_audit.analysis import analyze
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.records import IMAGES, JUDGE, SCORE, image_pair_key, judge_key, score_key
from aesthetic_audit.report import write_report
from aesthetic_audit.store.run import Record, RunStore

EVIL = "<script>alert('x')</script>"


def _build(root, n_pairs: int = 3, n_failures: int = 2, label_source: str = "test",
           strengths: tuple[float, ...] = (0.5,)) -> RunStore:
    store = RunStore(root)
    store.write_manifest({"config_hash": "cafe1234", "package": {"name": "aesthetic-audit", "version": "0.1.0"}, "created": "2026-01-02"})
    records = []
    for i in range(n_pairs):
        # A large I_o checks that thumbnails are downscaled.
        sha_o = store.put_image(Image.new("RGB", (600, 400), (200, 40 * i, 90)))
        sha_a = store.put_image(Image.new("RGB", (64, 48), (10, 40 * i, 30)))
        p_o, p_a = f"a cat number {i}", f"a murky cat {EVIL} number {i}"
        key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
        records.append(Record(key=key, stage=IMAGES, item=f"pair{i}", data={
            "image_pair_id": key, "pair_id": f"p{i}", "p_o": p_o, "p_a": p_a, "dims": ["clarity", "emotion"],
            "image_o": sha_o, "image_a": sha_a, "backend": "editor", "strength": strengths[i % len(strengths)], "transforms": [],
            "label": {"value": i % 2, "source": label_source}, "model": None, "source_item": None}))
        for scorer, prompt_aware in (("pickscore_like", True), ("aesthetic&blind", False)):
            combos = [(sha_o, p_o), (sha_o, p_a), (sha_a, p_o), (sha_a, p_a)] if prompt_aware else \
                [(sha_o, None), (sha_a, None)]
            for j, (image, prompt) in enumerate(combos):
                records.append(Record(
                    key=score_key(scorer={"name": scorer}, image=image, prompt=prompt), stage=SCORE,
                    item=f"{scorer}:{image[:8]}", data={
                        "scorer": scorer, "image": image, "prompt": prompt, "score": 1.0 + j + i,
                        "tokens": 7, "truncated": False, "higher_is_better": True}))
        for sha, j in ((sha_o, 1.8), (sha_a, 0.4)):
            records.append(Record(key=judge_key(judge={"name": "classical"}, image=sha, dims=["clarity"]),
                                  stage=JUDGE, item=sha[:8],
                                  data={"judge": "classical", "image": sha, "scores": {"clarity": j},
                                        "covered": ["clarity"]}))
    for k in range(n_failures):
        records.append(Record.failed(f"fail{k}", SCORE, f"item-{k}", f"error <b>{k}</b> see https://example.org"))
    store.put_many(records)
    return store


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")  # built once: the tests below only read it
    store = _build(tmp_path / "run")
    analysis = analyze(store, AnalysisConfig(bootstrap=100), seed=0)
    path = write_report(store, analysis, tmp_path / "out" / "report.html")
    return path, path.read_text(encoding="utf-8"), analysis


def test_one_offline_file(report, tmp_path):
    path, text, _ = report
    assert path.exists() and list(path.parent.iterdir()) == [path]
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "@import" not in text
    # the charts' only references are to their own clip paths and markers
    assert set(re.findall(r"url\((.)", text)) <= {"#"} and set(re.findall(r'href="(.)', text)) <= {"#"}
    # one script, the gallery filter, inline; the one in the prompts is escaped
    assert text.count("<script") == 1 and "<script>\n(function () {" in text and "<script src" not in text


def test_user_text_is_escaped(report):
    _, text, _ = report
    assert "a murky cat &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; number 0" in text
    assert "aesthetic&amp;blind" in text
    assert "error &lt;b&gt;1&lt;/b&gt;" in text


def test_summary_heatmap_and_run_info(report):
    _, text, analysis = report
    for name in ("pickscore_like", "aesthetic&amp;blind", "classical"):
        assert name in text
    assert analysis["scorers"]["pickscore_like"]["n"] == 3
    assert "<td>3</td>" in text  # n per scorer
    assert "cafe1234" in text and "2026-01-02" in text
    # heat-map cells carry a colour and a tooltip with the interval and n
    assert re.search(r'class="cell" style="background: rgb\(\d+, \d+, \d+\)[^"]*" title="pickscore_like · '
                     r'clarity: [0-9.]+ \[[0-9.]+, [0-9.]+\], n = 3"', text)
    for heading in ("Reward models", "Per dimension", "Per edit strength", "Judge", "Safety", "Gallery",
                    "Failures"):
        assert f"<h2>{heading}</h2>" in text


def test_thumbnails_are_embedded_and_small(report):
    _, text, _ = report
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 6  # three pairs, two images each
    sizes = [Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris]
    assert (192, 128) in sizes and max(max(s) for s in sizes) <= 192


def test_failures_listed_and_capped(tmp_path):
    store = _build(tmp_path / "run", n_pairs=1, n_failures=7)
    analysis = analyze(store, AnalysisConfig(bootstrap=100))
    text = write_report(store, analysis, tmp_path / "r.html", max_failures=5).read_text(encoding="utf-8")
    assert "item-0" in text and "item-4" in text and "item-5" not in text
    assert "and 2 more" in text
    assert "<td>7</td>" in text  # failed count for the score stage


def test_missing_image_does_not_break_the_report(tmp_path):
    store = _build(tmp_path / "run", n_pairs=1, n_failures=0)
    for path in store.images_dir.rglob("*.png"):
        path.unlink()
    text = write_report(store, analyze(store, AnalysisConfig(bootstrap=100)), tmp_path / "r.html").read_text()
    assert "image unavailable" in text and "No failed items." in text


def _generated(store: RunStore, model: str, generator: dict, params: dict, n: int, failed: int = 0) -> None:
    records = []
    for i in range(n + failed):
        key = image_pair_key(backend=generator, inputs={"model": model, "i": i}, seed=0)
        data = {"pair_id": f"p{i}", "p_o": "a cat", "p_a": "a murky cat", "dims": ["clarity"], "backend": "generate",
                "model": model, "generator": generator, "params": params, "label": None, "transforms": []}
        if i >= n:
            records.append(Record.failed(key, IMAGES, f"{model}:{i}", "I_o (p_o): blank image", **data))
            continue
        sha_o = store.put_image(Image.new("RGB", (16, 16), (i, 2, 3)))
        sha_a = store.put_image(Image.new("RGB", (16, 16), (i, 3, 2)))
        records.append(Record(key, IMAGES, f"{model}:{i}", {"image_pair_id": key, **data, "image_o": sha_o,
                                                            "image_a": sha_a}))
    store.put_many(records)


def _generators_table(text: str) -> list[list[str]]:
    """The Generators section's body rows, as the text of their cells."""
    section = text.split("<h2>Generators</h2>", 1)[1].split("<h2>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_generators_section_shows_each_generators_settings_per_side(tmp_path):
    store = _build(tmp_path / "run", n_pairs=2, n_failures=0)
    asym = {"name": f"sd35m{EVIL}", "preset": "sd35m", "backend": "diffusers", "identity_hash": "1" * 64,
            "identity": {"name": "diffusers", "model": {"repo": "org/<b>m</b>", "revision": "c" * 40},
                         "dtype": "bf16", "lora": {"sha256": "f" * 64, "scale": 0.5},
                         "options": {"lora": "jieliu/SD3.5M-FlowGRPO-PickScore"}},
            "options": {"lora": "jieliu/SD3.5M-FlowGRPO-PickScore"}}
    same = {"name": "api", "preset": None, "backend": "openai-images", "identity_hash": "2" * 64,
            "identity": {"name": "openai-images", "options": {"model": "gpt-image-1-mini",
                                                              "base_url": "https://images.example.com/v1"}},
            "options": {"model": "gpt-image-1-mini"}}
    _generated(store, f"sd35m{EVIL}", asym, {"o": {"num_inference_steps": 40, "guidance_scale": 4.0},
                                             "a": {"num_inference_steps": 32, "guidance_scale": 6.0}}, n=2, failed=1)
    _generated(store, "api", same, {"o": {"quality": "low"}, "a": {"quality": "low"}}, n=3)
    path = write_report(store, analyze(store, AnalysisConfig(bootstrap=100), seed=0), tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert EVIL not in text and "<b>m</b>" not in text
    assert "sd35m&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "org/&lt;b&gt;m&lt;/b&gt;" in text
    rows = _generators_table(text)
    assert rows == [
        [f"sd35m{EVIL}", "diffusers", f"org/<b>m</b> @ {'c' * 40}", "bf16", "jieliu/SD3.5M-FlowGRPO-PickScore × 0.5",
         "steps 40, guidance 4.0", "steps 32, guidance 6.0", "asymmetric", "2", "1"],
        ["api", "openai-images", "gpt-image-1-mini at https://images.example.com/v1", "–", "–", "quality 'low'",
         "quality 'low'", "same", "3", "0"]]


def test_a_run_without_generated_pairs_has_no_generators_section(report):
    _, text, _ = report
    assert "<h2>Generators</h2>" not in text


def _section(text: str, heading: str) -> str:
    return text.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]


def test_reward_models_section_shows_strict_shares_ties_wilson_and_the_test(report):
    _, text, analysis = report
    s = analysis["scorers"]["pickscore_like"]
    # scores 1 + j + i: r(I_a, p_a) = 4 + i > r(I_o, p_a) = 2 + i in every pair, so no pair prefers I_o
    assert s["prefer_original_share"]["estimate"] == 0 and s["prefer_anti_share"]["estimate"] == 1
    assert s["ties"] == 0
    section = _section(text, "Reward models")
    assert "strictly" in section and "ties count half" not in text
    assert "Wilson [" in section and "assumes independent pairs" in section
    # labels 0, 1, 0 from a labeller: all three pairs predicted I_a, one right
    rm = s["reward_model_test"]
    assert rm["n"] == 3 and rm["accuracy"]["estimate"] == pytest.approx(1 / 3)
    assert 'acc 0.333 <span class="ci">[' in section and "n = 3; labels: test" in section
    # the prompt-blind scorer is marked as such
    assert re.search(r"aesthetic&amp;blind <span class=\"tag\">prompt-blind</span>", section)
    # the header says what the bootstrap resampled
    assert "over 3 pairs; pairs are resampled one by one" in text and "none (3 clusters)" in text


def test_construction_labels_give_no_reward_model_numbers(tmp_path):
    store = _build(tmp_path / "run", label_source="construction")
    analysis = analyze(store, AnalysisConfig(bootstrap=100), seed=0)
    assert all(s["reward_model_test"] is None for s in analysis["scorers"].values())
    text = write_report(store, analysis, tmp_path / "r.html").read_text(encoding="utf-8")
    section = _section(text, "Reward models")
    assert "acc " not in section and "AUROC [" not in section
    assert section.lower().count("no labeller or human labels") == 3  # both scorers' cells and the note
    assert "I_a by construction" in text
    assert 'data-filter="failed"' not in text  # no real labels: nothing can have failed


def test_per_generator_section(tmp_path):
    from test_analysis import GEN_CONFIG, build_generated

    store = build_generated(tmp_path / "run")
    analysis = analyze(store, GEN_CONFIG.model_copy(update={"bootstrap": 100}), seed=0)
    text = write_report(store, analysis, tmp_path / "r.html").read_text(encoding="utf-8")
    section = _section(text, "Per generator")
    rows = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", section)]
    # generation table: generator, n, Δr/AA of hps and clip, ΔJ/J AA, validity, success
    aligned = next(r for r in rows if r and r[0] == "aligned" and len(r) == 10)
    assert aligned[1] == "5" and aligned[2].startswith("1.300 [") and aligned[3].startswith("6.700 [")
    assert aligned[6].startswith("-0.900 [") and aligned[8].startswith("24.000") and aligned[9].startswith("0.400")
    assert 'title="n = 5"' in section and "mean r(I_a, p_a) of clip" in section
    # the shares per generator, and the aligned-vs-base tests with Holm
    assert ["base", "hps", "6", "0"] in [r[:4] for r in rows]
    mcn = next(r for r in rows if len(r) > 1 and r[1].startswith("mcnemar"))
    assert mcn[0] == "aligned vs base" and mcn[6] == "b = 0, c = 2" and mcn[8] == "0.250" and mcn[9] == "0.312"
    assert "Configured but not in this run: absent vs base." in section
    assert "Per generator and dimension" in section and 'title="aligned · hps · clarity: 0.800 [' in section
    # the summary says the same per generator: 2 of 5 labelled pairs of "aligned" succeed (0.400 above)
    summary = html.unescape(_section(text, "Summary"))
    assert "aligned's images followed the request (success) in 40% [" in summary
    assert "of 5 labelled pairs, by test" in summary and " of 6 pairs from base" in summary
    # success against the conventional score: one point per generator and reward model with a success rate
    chart = _section(text, "Charts")
    assert "Success rate against the conventional score of I_a, per generator" in chart
    gen = analysis["generation"]["by_model"]
    with_success = [m for m, r in gen.items() if (r.get("success_rate") or {}).get("estimate") is not None]
    assert len(with_success) >= 2 and all(m in chart for m in with_success)


def test_no_per_generator_section_for_editor_pairs(report):
    _, text, analysis = report
    assert "by_model" not in analysis and "<h2>Per generator</h2>" not in text


# -- summary, charts, gallery, methods ---------------------------------------------------------------

def test_scorer_sentence_reads_like_the_issue_example():
    from aesthetic_audit.report.summary import scorer_sentence

    cell = {"estimate": 0.61, "low": 0.553, "high": 0.668, "n": 300}
    anti = {"estimate": 0.37, "low": 0.31, "high": 0.425, "n": 300}
    text = scorer_sentence("HPSv2.1", {"n": 300, "ties": 6, "prefer_original_share": cell,
                                       "prefer_anti_share": anti})
    assert text == ("HPSv2.1 preferred the image that ignored the request in 61% [55, 67] of 300 pairs, "
                    "and the requested image in 37% [31, 42]; 6 ties.")


def test_summary_comes_first_with_shares_and_success_rate(report):
    _, text, _ = report
    assert text.index("<h2>Summary</h2>") < text.index("<h2>Charts</h2>") < text.index("<h2>Reward models</h2>")
    summary = _section(text, "Summary")
    # every pair has r(I_a, p_a) > r(I_o, p_a) for both scorers (scores 1 + j + i), so 0% prefer I_o
    assert ("pickscore_like preferred the image that ignored the request in 0% [0, 0] of 3 pairs, "
            "and the requested image in 100% [100, 100].") in summary
    assert re.search(r"aesthetic&amp;blind preferred .*?</li>", summary).group(0).count("prompt-blind") == 1
    # labels 0, 1, 0 from the "test" labeller: one success in three
    assert "followed the request (success) in 33% [" in summary and "of 3 labelled pairs, by test" in summary


def test_a_scorer_made_from_the_judge_is_flagged_as_not_independent(tmp_path):
    store = _build(tmp_path / "run", n_failures=0)
    manifest = store.read_manifest()
    manifest["backends"] = {"scorer:pickscore_like": {"identity": {"name": "pickscore_like", "version": "1",
                                                                   "judge": {"name": "classical"}}},
                            "judge:classical": {"name": "classical", "version": "1"}}
    manifest["dependencies"] = {"numpy": "9.9.9"}
    store.write_manifest(manifest)
    text = write_report(store, analyze(store, AnalysisConfig(bootstrap=100)), tmp_path / "r.html").read_text()
    note = "computed from the classical judge"
    assert note in _section(text, "Summary") and note in _section(text, "Methods")
    methods = _section(text, "Methods")
    from aesthetic_audit.hashing import spec_hash

    assert spec_hash({"name": "classical", "version": "1"})[:16] in methods
    assert "<dt>numpy</dt><dd>9.9.9</dd>" in methods and "<dt>pairs analysed</dt><dd>3</dd>" in methods


def _svgs(text: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", text, re.DOTALL)


def test_charts_are_inline_svg_and_deterministic(tmp_path):
    store = _build(tmp_path / "run", n_failures=0)
    analysis = analyze(store, AnalysisConfig(bootstrap=100), seed=0)
    first = write_report(store, analysis, tmp_path / "a.html").read_text(encoding="utf-8")
    second = write_report(store, analysis, tmp_path / "b.html").read_text(encoding="utf-8")
    charts = _svgs(_section(first, "Charts"))
    assert len(charts) == 2  # shares and Δr; one strength only, so no strength curve
    assert charts == _svgs(_section(second, "Charts"))
    assert all("<dc:date>" not in svg for svg in charts)
    assert 'aria-label="Share of pairs preferring the original, per scorer"' in charts[0]
    assert "pickscore_like" in charts[0] and "(n = 3)" in charts[1]  # text stays text


def test_delta_values_are_the_per_pair_differences(tmp_path):
    from aesthetic_audit.analysis.audit import RunData
    from aesthetic_audit.report.charts import delta_values

    store = _build(tmp_path / "run", n_failures=0)
    values = delta_values(RunData.from_store(store))
    # r(I_a, p_o) - r(I_o, p_o) = (3 + i) - (1 + i) with a prompt; (2 + i) - (1 + i) prompt-blind
    assert values == {"pickscore_like": {"all pairs": [2.0, 2.0, 2.0]},
                      "aesthetic&blind": {"all pairs": [1.0, 1.0, 1.0]}}


def test_strength_curve_appears_with_two_strengths(tmp_path):
    store = _build(tmp_path / "run", n_failures=0, strengths=(1.0, 0.25))
    text = write_report(store, analyze(store, AnalysisConfig(bootstrap=100)), tmp_path / "r.html").read_text()
    assert 'aria-label="Share preferring the original against edit strength"' in text


def test_gallery_holds_every_pair_with_filter_attributes(report):
    _, text, _ = report
    cards = re.findall(r'<div class="card" data-model="([^"]*)" data-dims="([^"]*)" data-disagree="(\d)" '
                       r'data-failed="(\d)">', text)
    # both scorers prefer I_a in every pair; labels 0, 1, 0: pairs 0 and 2 are failures
    assert cards == [("editor", "clarity|emotion", "0", "1"), ("editor", "clarity|emotion", "0", "0"),
                     ("editor", "clarity|emotion", "0", "1")]
    assert "3 of 3 pairs shown" in text and 'data-filter="dims"' in text


def test_disagreement_needs_two_reward_models_pointing_opposite_ways():
    from aesthetic_audit.analysis.audit import Pair, RunData
    from aesthetic_audit.report.html import _disagree

    pair = Pair(key="k", p_o="po", p_a="pa", dims=(), image_o="o", image_a="a")
    data = RunData(pairs=[pair], scorers=["up", "down", "nsfw"],
                   higher_is_better={"up": True, "down": False, "nsfw": True},
                   reward_model={"up": True, "down": True, "nsfw": False},
                   scores={("up", "o", "pa"): 1.0, ("up", "a", "pa"): 2.0,  # prefers I_a
                           ("down", "o", "pa"): 1.0, ("down", "a", "pa"): 2.0,  # lower is better: I_o
                           ("nsfw", "o", "pa"): 0.0, ("nsfw", "a", "pa"): 1.0})
    assert _disagree(data, pair)
    data.scores[("down", "a", "pa")] = 0.5  # now both prefer I_a; nsfw is no reward model
    assert not _disagree(data, pair)


def test_tables_scroll_inside_their_box(report):
    _, text, _ = report
    assert text.count('<div class="scroll"><table') == text.count("<table")
    assert ".scroll { overflow-x: auto;" in text and "minmax(min(100%, 460px), 1fr)" in text


def test_several_runs_side_by_side_in_one_file(tmp_path, cli):
    """`report RUN RUN -o FILE`: one table of every scorer's strict share per run, then each run's
    report; the two runs' numbers are their own analyses' numbers."""
    a, b = _build(tmp_path / "a" / "run", n_pairs=3), _build(tmp_path / "b" / "run", n_pairs=4)
    out = tmp_path / "compare.html"
    code, _, err = cli("report", a.root, b.root, "-o", out, "-q")
    assert code == 0, err
    page = out.read_text()
    assert "2 runs side by side" in page and 'id="run-0"' in page and 'id="run-1"' in page
    assert "run (1)" in page and "run (2)" in page  # two folders of one name told apart
    for root in (a.root, b.root):
        shares = json.loads((root / "analysis.json").read_text())["scorers"]
        for cell in (s["prefer_original_share"] for s in shares.values()):
            assert f"n = {cell['n']}" in page
    assert 'id="gallery"' not in page  # galleries stay in each run's own report
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # each run's section anchors and chart clip paths are its own
    assert all(ref in ids for ref in re.findall(r'url\(#([^)]+)\)', page))
    code, _, err = cli("report", a.root, b.root)
    assert code == 2 and "-o" in err
