"""A stage killed with SIGKILL and run again ends with exactly the records of an uninterrupted run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fake_llm import FakeChat

CLI = [sys.executable, "-m", "aesthetic_audit.cli", "-q"]


def _rows(run):
    db = sqlite3.connect(run / "records.sqlite")
    try:
        return db.execute("SELECT key, stage, status, data FROM records ORDER BY key").fetchall()
    finally:
        db.close()


def _count(run):
    try:
        db = sqlite3.connect(run / "records.sqlite", timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def kill_when(cmd, run, at_least, timeout=60):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "records.sqlite").exists() and _count(run) >= at_least:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed; make it slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _count(run)


def _env():
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    env["OPENAI_API_KEY"] = "test"
    return env


def _strip_meta(rows):
    """Drop fields that legitimately differ between runs (timings, usage)."""
    import json

    out = []
    for key, stage, status, data in rows:
        d = json.loads(data)
        d.pop("meta", None)
        out.append((key, stage, status, d))
    return out


def test_llm_prompt_stage_resumes_after_sigkill(tmp_path):
    with FakeChat(delay_s=0.05) as server:
        args = ["prompts", "--rewriter", "llm", "-n", "40", "--set", f"prompts.llm.base_url={server.base_url}",
                "--set", "prompts.llm.concurrency=2"]
        killed = tmp_path / "killed"
        partial = kill_when(CLI + [args[0], str(killed)] + args[1:], killed, at_least=8)
        assert 0 < partial < 40
        subprocess.run(CLI + [args[0], str(killed)] + args[1:], check=True, env=_env(), timeout=120)
        clean = tmp_path / "clean"
        subprocess.run(CLI + [args[0], str(clean)] + args[1:], check=True, env=_env(), timeout=120)
    got, want = _strip_meta(_rows(killed)), _strip_meta(_rows(clean))
    assert len(want) == 40 and all(status == "ok" for _, _, status, _ in want)
    assert got == want
