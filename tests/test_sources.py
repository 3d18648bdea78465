import json

import pytest

from aesthetic_audit.errors import InputError
from aesthetic_audit.prompts.sources import read_captions


def test_builtin_has_at_least_300_unique_captions():
    cs = read_captions("builtin")
    assert len(cs.captions) >= 300 and not cs.warnings
    assert len({c.text.lower() for c in cs.captions}) == len(cs.captions)
    assert cs.captions[0].id == "builtin:line 1"


def test_coco_captions_json(tmp_path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 10, "caption": "A dog runs on the beach."},
        {"image_id": 1, "id": 11, "caption": "  A dog   running on sand.\n"},
        {"image_id": 2, "id": 12, "caption": ""},
        {"image_id": 2, "id": 13, "caption": "a dog runs on the beach."}]}))
    cs = read_captions(str(path))
    assert [(c.id, c.text) for c in cs.captions] == [
        ("captions_val2017.json:annotation 10", "A dog runs on the beach."),
        ("captions_val2017.json:annotation 11", "A dog running on sand.")]
    assert cs.warnings == ["captions_val2017.json:annotation 12: empty caption skipped",
                           "captions_val2017.json:annotation 13: duplicate of "
                           "captions_val2017.json:annotation 10 skipped"]


def test_partiprompts_tsv_with_column_and_filter(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\n"
                    "a red bicycle\tVehicles\tBasic\t\n"
                    "a koala reading a newspaper\tAnimals\tImagination\t\n"
                    "a bus in the rain\tVehicles\tPerspective\tnote\n")
    assert [c.text for c in read_captions(str(path)).captions] == [
        "a red bicycle", "a koala reading a newspaper", "a bus in the rain"]
    cs = read_captions(str(path), column="Prompt", filter={"Category": "Vehicles"})
    assert [(c.id, c.text) for c in cs.captions] == [("PartiPrompts.tsv:line 2", "a red bicycle"),
                                                    ("PartiPrompts.tsv:line 4", "a bus in the rain")]
    with pytest.raises(InputError, match="no column 'Kind'"):
        read_captions(str(path), filter={"Kind": "x"})


def test_csv_jsonl_and_text(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('id,text\n1,"A cat, asleep."\n2,A dog.\n')
    assert [c.text for c in read_captions(str(csv_path), column="text").captions] == ["A cat, asleep.", "A dog."]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"caption": "One."}\n\n{"caption": "Two.", "split": "val"}\n')
    assert [c.id for c in read_captions(str(jl)).captions] == ["c.jsonl:line 1", "c.jsonl:line 3"]
    assert [c.text for c in read_captions(str(jl), filter={"split": "val"}).captions] == ["Two."]
    txt = tmp_path / "c.txt"
    txt.write_text("First caption.\n\nSecond caption.\n")
    cs = read_captions(str(txt))
    assert [c.text for c in cs.captions] == ["First caption.", "Second caption."]
    assert cs.warnings == ["c.txt:line 2: empty caption skipped"]


def test_overlong_caption_is_a_counted_warning(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("ok caption\n" + "x" * 10_001 + "\n")
    cs = read_captions(str(txt))
    assert len(cs.captions) == 1
    assert cs.warnings == ["c.txt:line 2: caption of 10001 characters skipped (over 10000)"]


def test_whole_source_errors(tmp_path):
    with pytest.raises(InputError, match="missing.txt does not exist"):
        read_captions(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InputError, match="empty.txt is empty"):
        read_captions(str(empty))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond \xff\xfe line\n")
    with pytest.raises(InputError, match=r"bad.txt:2: bytes that are not UTF-8"):
        read_captions(str(bad))
    js = tmp_path / "x.json"
    js.write_text('{"images": []}')
    with pytest.raises(InputError, match="no 'annotations' list"):
        read_captions(str(js))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n x \n")
    assert len(read_captions(str(blank)).captions) == 1
    only_dupes = tmp_path / "d.jsonl"
    only_dupes.write_text('{"caption": ""}\n')
    with pytest.raises(InputError, match="no usable captions"):
        read_captions(str(only_dupes))
    with pytest.raises(InputError, match="pass --format"):
        read_captions(_touch(tmp_path / "a.xyz"))


def _touch(path):
    path.write_text("something\n")
    return str(path)


# -- malformed and hostile sources (issue 7, item 12) -----------------------------------------------

@pytest.mark.parametrize("body, line", [
    # the quote is never closed: without strict reading the rest of the file became one caption
    ('1,"A dog on a beach.\n2,A cat asleep.\n3,A bird.\n', 2),
    # closed by a later cell's opening quote
    ('1,"A dog on a beach.\n2,A cat asleep.\n3,"A bird, flying."\n', 2),
    # closed just before a delimiter: parses, but swallows line 3 into line 2's caption
    ('1,A dog.\n2,"A cat asleep.\n3,A bird",x\n4,A cow.\n', 3),
])
def test_csv_with_an_unclosed_quote_is_an_error_naming_the_line(tmp_path, body, line):
    path = tmp_path / "caps.csv"
    path.write_text("id,caption\n" + body)
    with pytest.raises(InputError, match=rf"^caps\.csv:{line}: .*an unclosed quote\?"):
        read_captions(str(path))


def test_tsv_quotes_are_plain_characters_as_in_partiprompts(tmp_path):
    # PartiPrompts line 1562 starts with a quoted word; CSV quoting would drop the quotes or fail.
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text('Prompt\tCategory\n"G I G G L E" painted on a wall\tWriting\nsay "hi\tWriting\na cow\tAnimals\n')
    assert [c.text for c in read_captions(str(path)).captions] == [
        '"G I G G L E" painted on a wall', 'say "hi', "a cow"]


@pytest.mark.parametrize("suffix, text", [
    ("txt", "A dog.\nA c\x00at.\nA bird \x1b[31mred.\nA cow.\n"),
    ("csv", "caption\nA dog.\nA c\x00at.\nA bird \x1b[31mred.\nA cow.\n"),
    ("jsonl", '{"caption": "A dog."}\n{"caption": "A c\\u0000at."}\n{"caption": "A bird \\u001b[31mred."}\n'
              '{"caption": "A cow."}\n'),
])
def test_control_characters_never_reach_a_prompt(tmp_path, suffix, text):
    path = tmp_path / f"c.{suffix}"
    path.write_text(text)
    cs = read_captions(str(path))
    assert [c.text for c in cs.captions] == ["A dog.", "A cow."]
    first = 3 if suffix == "csv" else 2  # csv has a header line
    assert cs.warnings == [f"c.{suffix}:line {first}: caption with the control character U+0000 skipped",
                           f"c.{suffix}:line {first + 1}: caption with the control character U+001B skipped"]


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"caption": "A dog."}\n{"caption": ' + deep + "}\n")
    with pytest.raises(InputError, match=r"^c\.jsonl:2: JSON nested too deeply$"):
        read_captions(str(jl))
    coco = tmp_path / "c.json"
    coco.write_text('{"annotations": ' + deep + "}")
    with pytest.raises(InputError, match=r"^c\.json: JSON nested too deeply$"):
        read_captions(str(coco))
    # a nested value in a filter column matches no filter instead of being turned into text
    jl.write_text('{"caption": "A dog.", "split": [[["val"]]]}\n{"caption": "A cat.", "split": "val"}\n')
    assert [c.text for c in read_captions(str(jl), filter={"split": "val"}).captions] == ["A cat."]
