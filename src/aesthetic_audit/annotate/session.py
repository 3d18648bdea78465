"""The annotation study of a run: which pairs, which raters, their tokens, queues, answers, undo and flags.

``prepare`` writes ``RUN/annotate/setup.json`` (mode 0600: it holds the raters' secret tokens) and nothing
else; calling it again with the same raters returns the same tokens, keeps every answer, and adds raters
that are new. The setup records:

- ``pairs``: the study's image pairs, the run's distinct (I_o, I_a, p_a) with both images stored, ``pairs``
  of them drawn with ``random.Random(f"{seed}:sample")`` as the Label Studio export draws them, the same
  set for every rater;
- per rater: the token, the order the pairs are shown in (shuffled from seed + rater) and which image of
  each pair is shown first (a fair coin from seed + rater + pair, so position bias averages out over
  raters);
- ``flagged``: pairs an admin marked as possibly upsetting; they leave the queues unless ``show_flagged``.

Answers are ``labels`` records in exactly the format ``labels.humans`` imports (source ``human:<rater>``,
key ``label_key(source, image_o, image_a, p_a, seed=None)``), with ``source_item`` "annotate". Answering a
pair again replaces its record. The undo stack is the records themselves: the rater's app answers in the
order they were stored (a replaced answer is stored anew, so it counts as the latest), which survives a
server restart without keeping any other state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import AuditError, InputError
from ..labels.humans import _rater, value_of
from ..records import IMAGES, LABELS, has_pixels, label_key
from ..store.run import Record, RunStore

SETUP_DIR, SETUP_FILE = "annotate", "setup.json"
SOURCE_ITEM = "annotate"  # source_item of the app's answers (imports record their file and line)
SELECTIONS = {"first": 0, "second": 1, "tie": -1}
_VERSION = 1


@dataclass
class Rater:
    token: str
    order: list[str]            # image_pair_ids in the order this rater sees them
    first: dict[str, str]       # image_pair_id -> "o" | "a": the image shown first


@dataclass
class Setup:
    """An annotation study stored in ``RUN/annotate/setup.json``."""

    run_dir: Path
    seed: int
    n_pairs: int | None                     # as asked (None: every pair)
    show_flagged: bool
    admin_token: str
    csrf_key: str
    pairs: dict[str, dict[str, Any]]        # image_pair_id -> pair_id, model, image_o, image_a, p_a
    raters: dict[str, Rater]
    flagged: set[str] = field(default_factory=set)

    @property
    def tokens(self) -> dict[str, str]:
        """Rater name -> secret token (the rater's link is ``/r/<token>/``)."""
        return {name: r.token for name, r in self.raters.items()}

    def to_json(self) -> dict[str, Any]:
        return {"version": _VERSION, "seed": self.seed, "n_pairs": self.n_pairs, "show_flagged": self.show_flagged,
                "admin_token": self.admin_token, "csrf_key": self.csrf_key, "pairs": self.pairs,
                "raters": {n: {"token": r.token, "order": r.order, "first": r.first} for n, r in self.raters.items()},
                "flagged": sorted(self.flagged)}

    # -- who is asking ---------------------------------------------------------------------------
    def rater_for(self, token: str) -> str | None:
        """The rater whose token this is, or None. Compares digests of the tokens, so the time a lookup
        takes says nothing about how much of a guessed token was right."""
        wanted = _digest(token)
        found = None
        for name, r in self.raters.items():
            if secrets.compare_digest(_digest(r.token), wanted):
                found = name
        return found

    def is_admin(self, token: str) -> bool:
        return secrets.compare_digest(_digest(self.admin_token), _digest(token))

    def csrf_for(self, token: str) -> str:
        """The form secret of one session (a rater's or the admin's token), derived from the setup's key."""
        return hmac.new(self.csrf_key.encode(), token.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, sent: str) -> bool:
        return bool(sent) and secrets.compare_digest(self.csrf_for(token).encode(), sent.encode("utf-8", "replace"))

    # -- queues ----------------------------------------------------------------------------------
    def visible(self, pair_id: str) -> bool:
        return pair_id in self.pairs and (self.show_flagged or pair_id not in self.flagged)

    def assigned(self, rater: str) -> list[str]:
        """The rater's pairs in their order, less flagged ones unless ``show_flagged``."""
        return [p for p in self.raters[rater].order if self.visible(p)]

    def label_key(self, rater: str, pair_id: str) -> str:
        pair = self.pairs[pair_id]
        return label_key(source=f"human:{rater}", image_o=pair["image_o"], image_a=pair["image_a"],
                         prompt=pair["p_a"], seed=None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def setup_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SETUP_DIR / SETUP_FILE


def load_setup(run_dir: str | os.PathLike) -> Setup | None:
    """The stored setup, or None when the run has none yet."""
    path = setup_path(run_dir)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        _check_shape(raw)
        return Setup(run_dir=Path(run_dir), seed=int(raw["seed"]), n_pairs=raw["n_pairs"],
                     show_flagged=bool(raw["show_flagged"]), admin_token=raw["admin_token"],
                     csrf_key=raw["csrf_key"], pairs=raw["pairs"],
                     raters={n: Rater(r["token"], list(r["order"]), dict(r["first"])) for n, r in raw["raters"].items()},
                     flagged=set(raw["flagged"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path} is unreadable or corrupt ({exc}); move it aside to start a new annotation "
                         "study (the answers stay in the run)") from None


_SHA_TEXT = re.compile(r"[0-9a-f]{64}")
_MIN_SECRET = 16  # tokens are token_urlsafe(24): 32 characters; a short one was written by hand


def _check_shape(raw: Any) -> None:
    """Raise ValueError saying what is wrong when ``raw`` is not a setup as ``save_setup`` writes it: a
    hand-edited or damaged file must not serve guessable links or fail later on every request."""
    def secret(value: Any, what: str) -> None:
        if not isinstance(value, str) or len(value) < _MIN_SECRET:
            raise ValueError(f"{what} is not a secret token of {_MIN_SECRET}+ characters")

    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if isinstance(raw.get("seed"), bool) or not isinstance(raw.get("seed"), int):
        raise ValueError("seed is not an integer")
    if raw.get("n_pairs") is not None and (isinstance(raw["n_pairs"], bool) or not isinstance(raw["n_pairs"], int)):
        raise ValueError("n_pairs is not an integer or null")
    secret(raw.get("admin_token"), "admin_token")
    secret(raw.get("csrf_key"), "csrf_key")
    pairs = raw.get("pairs")
    if not isinstance(pairs, dict) or not all(
            isinstance(p, dict) and isinstance(p.get("p_a"), str)
            and all(isinstance(p.get(k), str) and _SHA_TEXT.fullmatch(p[k]) for k in ("image_o", "image_a"))
            for p in pairs.values()):
        raise ValueError("pairs is not a mapping of pair ids to {image_o, image_a (SHA-256), p_a}")
    raters = raw.get("raters")
    if not isinstance(raters, dict):
        raise ValueError("raters is not a mapping")
    for name, r in raters.items():
        if not isinstance(r, dict):
            raise ValueError(f"rater {name!r} is not a mapping")
        secret(r.get("token"), f"rater {name!r}'s token")
        order, first = r.get("order"), r.get("first")
        if not isinstance(order, list) or any(p not in pairs for p in order):
            raise ValueError(f"rater {name!r}'s order names pairs the study does not hold")
        if not isinstance(first, dict) or any(v not in ("o", "a") for v in first.values()):
            raise ValueError(f"rater {name!r}'s shown sides are not all 'o' or 'a'")
    flagged = raw.get("flagged")
    if not isinstance(flagged, list) or any(not isinstance(p, str) for p in flagged):
        raise ValueError("flagged is not a list of pair ids")


def save_setup(setup: Setup) -> None:
    """Write the setup atomically with mode 0600 (the temporary file is created 0600 and renamed)."""
    path = setup_path(setup.run_dir)
    tmp = None
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(setup.to_json(), fh, indent=1)  # key order is the pairs' order
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise AuditError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- prepare ------------------------------------------------------------------------------------

def prepare(run_dir: str | os.PathLike, *, pairs: int | None = None, raters: Sequence[str] | None = None,
            n_raters: int | None = None, seed: int = 0, show_flagged: bool = False) -> Setup:
    """Create or resume the run's annotation study; return its setup (``tokens``, ``admin_token``).

    ``raters`` names the raters; ``n_raters`` = K names them rater1..raterK; with neither, a new study
    has one rater (rater1) and a stored one keeps its raters. A stored study keeps its pairs, orders and
    tokens; raters not in it yet are added. Asking a stored study for another seed or number of pairs is an
    error (move ``RUN/annotate/setup.json`` aside to start another study).
    """
    if raters is not None and n_raters is not None:
        raise InputError("give rater names or a number of raters, not both")
    if n_raters is not None and n_raters < 1:
        raise InputError(f"the number of raters must be at least 1, not {n_raters}")
    if pairs is not None and pairs < 1:
        raise InputError(f"pairs must be at least 1, not {pairs}")
    names = [_rater(r) for r in raters] if raters is not None else (
        [f"rater{i}" for i in range(1, n_raters + 1)] if n_raters is not None else [])
    if len(set(names)) != len(names):
        raise InputError(f"rater names repeat: {', '.join(names)}")
    store = RunStore(run_dir, create=False)
    try:
        setup = load_setup(run_dir)
        if setup is None:
            chosen = _sample_pairs(store, pairs, seed)
            setup = Setup(run_dir=Path(run_dir), seed=seed, n_pairs=pairs, show_flagged=show_flagged,
                          admin_token=secrets.token_urlsafe(24), csrf_key=secrets.token_urlsafe(32),
                          pairs=chosen, raters={})
            names = names or ["rater1"]
        else:
            path = setup_path(run_dir)
            if seed != setup.seed:
                raise InputError(f"{path} was made with seed {setup.seed}, not {seed}; pass --seed {setup.seed} to "
                                 "resume it, or move it aside to start a new study")
            if pairs is not None and pairs != setup.n_pairs:
                raise InputError(f"{path} holds a study of {len(setup.pairs)} pairs (asked: {setup.n_pairs or 'all'}),"
                                 f" not {pairs}; leave out --pairs to resume it, or move it aside to start anew")
            setup.show_flagged = show_flagged
        for name in names:
            if name not in setup.raters:
                setup.raters[name] = _new_rater(setup, name)
        save_setup(setup)
        return setup
    finally:
        store.close()


def _sample_pairs(store: RunStore, n: int | None, seed: int) -> dict[str, dict[str, Any]]:
    """The run's distinct (I_o, I_a, p_a) whose images are stored, first-seen order; ``n`` of them drawn with
    the seed exactly as ``export_label_studio`` draws them, so the two give the same pairs."""
    unique: dict[tuple[str, str, str], Record] = {}
    for r in store.records(IMAGES):
        d = r.data
        if has_pixels(d["image_o"]) and has_pixels(d["image_a"]) and store.has_image(d["image_o"]) \
                and store.has_image(d["image_a"]):
            unique.setdefault((d["image_o"], d["image_a"], d.get("p_a", "")), r)
    chosen = list(unique.values())
    if not chosen:
        raise InputError(f"run {store.root} has no image pairs with both images stored: nothing to annotate")
    if n is not None and n < len(chosen):
        keep = set(random.Random(f"{seed}:sample").sample(range(len(chosen)), n))
        chosen = [r for i, r in enumerate(chosen) if i in keep]
    return {r.key: {"pair_id": r.data.get("pair_id"), "model": r.data.get("model"), "image_o": r.data["image_o"],
                    "image_a": r.data["image_a"], "p_a": r.data.get("p_a", "")} for r in chosen}


def _new_rater(setup: Setup, name: str) -> Rater:
    order = list(setup.pairs)
    random.Random(f"{setup.seed}:order:{name}").shuffle(order)
    first = {p: "a" if random.Random(f"{setup.seed}:first:{name}:{p}").random() < 0.5 else "o" for p in order}
    return Rater(token=secrets.token_urlsafe(24), order=order, first=first)


# -- answers ------------------------------------------------------------------------------------

def answered(store: RunStore, setup: Setup, rater: str) -> dict[str, int]:
    """The rater's stored labels of their visible pairs: image_pair_id -> value. Labels imported for this rater
    count too: the pair was answered."""
    out = {}
    for pair_id in setup.assigned(rater):
        record = store.get(setup.label_key(rater, pair_id))
        if record is not None and record.status == "ok":
            out[pair_id] = int(record.data["value"])
    return out


def next_pair(store: RunStore, setup: Setup, rater: str) -> str | None:
    done = answered(store, setup, rater)
    return next((p for p in setup.assigned(rater) if p not in done), None)


def answer(store: RunStore, setup: Setup, rater: str, pair_id: str, choice: str) -> int:
    """Store the rater's answer (``first``/``second``/``tie`` as shown) for a visible pair; return the label
    value (-1 tie, 0 original, 1 anti-aesthetic). A pair answered before gets this answer instead."""
    if not setup.visible(pair_id) or pair_id not in setup.raters[rater].first:
        raise InputError(f"pair {pair_id} is not assigned to rater {rater}")
    selection = SELECTIONS[choice]
    first = setup.raters[rater].first[pair_id]
    value = value_of(selection, first)
    pair = setup.pairs[pair_id]
    source = f"human:{rater}"
    # the fields labels.humans.import_human_labels writes, so analysis and export read both alike
    data = {"source": source, "labeller": "human", "labeller_id": None, "image_pair_id": pair_id,
            "pair_id": pair["pair_id"], "model": pair["model"], "image_o": pair["image_o"],
            "image_a": pair["image_a"], "p_a": pair["p_a"], "value": value,
            "answers": [{"first": first, "selection": selection, "value": value}],
            "disagree": None, "seed": None, "source_item": SOURCE_ITEM}
    key = setup.label_key(rater, pair_id)
    store.replace(Record(key, LABELS, f"{SOURCE_ITEM}:{rater}:{pair_id[:12]}", data))  # a new answer wins
    return value


def undo(store: RunStore, setup: Setup, rater: str) -> str | None:
    """Remove the rater's latest answer given in the app (of a visible pair); return its pair, or None."""
    keys = {setup.label_key(rater, p): p for p in setup.assigned(rater)}
    if not keys:
        return None
    marks = ",".join("?" * len(keys))
    rows = store.db.execute(f"SELECT key, data FROM records WHERE stage = ? AND status = 'ok' AND key IN ({marks}) "
                            "ORDER BY rowid DESC", [LABELS, *keys]).fetchall()
    for key, data in rows:
        if json.loads(data).get("source_item") == SOURCE_ITEM:
            store.delete(LABELS, [key])  # a rater may take an answer back; stage results stay final
            return keys[key]
    return None


def set_flag(setup: Setup, pair_id: str, flagged: bool) -> None:
    """Mark a pair as possibly upsetting (it leaves the queues) or clear the mark; saved at once."""
    if pair_id not in setup.pairs:
        raise InputError(f"pair {pair_id} is not in this annotation study")
    (setup.flagged.add if flagged else setup.flagged.discard)(pair_id)
    save_setup(setup)
