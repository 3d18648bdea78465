import pytest

from aesthetic_audit.dimensions import load_catalogue, load_visionreward_rubric
from aesthetic_audit.errors import ConfigError, InputError

STUDY = ["background", "clarity", "color aesthetic", "color brightness", "detail realism", "detail refinement",
         "emotion", "lighting distinction", "main object", "object pairing", "richness"]


def test_builtin_catalogue_has_the_study_dimensions_and_two_optional():
    cat = load_catalogue()
    assert cat.study_keys == STUDY
    assert cat.keys()[-2:] == ["symmetry", "lighting aesthetic"]
    assert cat["clarity"].name == "Overall Clarity"
    assert cat["lighting distinction"].name == "Environmental Light and Shadow Prominence"
    for d in cat:
        assert sorted(d.rubric) == [0, 1, 2] and all(d.rubric.values())
        assert len(d.phrasings) >= 3 and d.anti and d.conventional
    assert [d.key for d in cat if not d.editor] == ["background", "emotion", "object pairing", "lighting aesthetic"]


def test_user_file_adds_and_overrides(tmp_path):
    path = tmp_path / "dims.yaml"
    path.write_text("""
dimensions:
  - key: pixelated
    name: Pixelation
    conventional: smooth full-resolution detail
    anti: coarse square blocks like a tiny image blown up
    rubric: {0: blocky, 1: slightly blocky, 2: smooth}
    phrasings: [big blocky pixels]
    editor: [pixelation]
  - key: clarity
    phrasings: [a smeared unfocused haze]
""")
    cat = load_catalogue(path)
    assert cat["pixelated"].editor == ("pixelation",) and not cat["pixelated"].study
    assert cat["clarity"].phrasings == ("a smeared unfocused haze",)
    assert cat["clarity"].name == "Overall Clarity"  # untouched fields stay
    assert len(cat) == 14


def test_user_file_errors_name_the_dimension(tmp_path):
    path = tmp_path / "dims.yaml"
    path.write_text("dimensions:\n  - key: pixelated\n    name: Pixelation\n")
    with pytest.raises(InputError, match="pixelated"):
        load_catalogue(path)
    path.write_text("dimensions:\n  - key: clarity\n    rubric: {0: a, 1: b}\n")
    with pytest.raises(InputError, match="levels 0, 1, 2"):
        load_catalogue(path)
    path.write_text("dims: []\n")
    with pytest.raises(InputError, match="one key 'dimensions'"):
        load_catalogue(path)


def test_unknown_key_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown dimension 'blurriness'.*clarity"):
        load_catalogue()["blurriness"]


def test_visionreward_guideline_csv(tmp_path):
    path = tmp_path / "guide.csv"
    path.write_text(
        "Dimension,Option,Score,Description\n"
        "Overall Clarity (clarity),very clear,2,Every edge is crisp.\n"
        ",somewhat clear,0,Mostly readable.\n"
        ",blurry,-1,Edges are smeared.\n"
        ",very blurry,-2,Nothing is legible.\n"
        "Brightness (color brightness),normal,1,Well exposed.\n"
        ",dark,-1,Too dark.\n")
    out = load_visionreward_rubric(path)
    assert out["clarity"]["name"] == "Overall Clarity"
    assert out["clarity"]["rubric"] == {2: "very clear: Every edge is crisp.", 1: "somewhat clear: Mostly readable.",
                                        0: "blurry: Edges are smeared.\nvery blurry: Nothing is legible."}
    assert out["color brightness"]["rubric"] == {0: "dark: Too dark.", 1: "", 2: "normal: Well exposed."}
    cat = load_catalogue().with_rubrics({k: v["rubric"] for k, v in out.items()})
    assert cat["clarity"].rubric[0].startswith("blurry")
    assert cat["emotion"].rubric == load_catalogue()["emotion"].rubric


def test_visionreward_csv_errors(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("Dimension,Option,Score,Description\nNo key here,x,1,y\n")
    with pytest.raises(InputError, match=r"g.csv:2: Dimension 'No key here' has no '\(key\)'"):
        load_visionreward_rubric(path)
    path.write_text("Dimension,Option,Score,Description\nA (a),x,high,y\n")
    with pytest.raises(InputError, match="g.csv:2: Score 'high' is not an integer"):
        load_visionreward_rubric(path)
    path.write_text("Dim,Opt\n")
    with pytest.raises(InputError, match="expected columns"):
        load_visionreward_rubric(path)


def test_cli_ls_dimensions(cli):
    code, out, _ = cli("ls", "dimensions")
    assert code == 0 and out.count("[study]") == 11 and "lighting aesthetic" in out


def test_user_file_read_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="dimensions file .*nope.yaml does not exist"):
        load_catalogue(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"dimensions:\n  - key: x\n    name: \xff\n")
    with pytest.raises(InputError, match=r"bad.yaml:3: bytes that are not UTF-8"):
        load_catalogue(bad)


def test_visionreward_multiline_cells_keep_their_newlines(tmp_path):
    path = tmp_path / "guide.csv"
    path.write_text('Dimension,Option,Score,Description\n'
                    'Overall Clarity (clarity),blurry,-1,"Edges smeared.\nText unreadable."\n'
                    ',sharp,1,Crisp.\n')
    rubric = load_visionreward_rubric(path)["clarity"]["rubric"]
    assert rubric[0] == "blurry: Edges smeared.\nText unreadable." and rubric[2] == "sharp: Crisp."
