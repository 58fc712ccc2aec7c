"""evaluate under torchrun: 2 gloo processes on CPU shard the images, each appends its own log, rank 0 merges
them into exactly the outputs of one process; an interrupted distributed run resumes (under 2 processes or 1)
without recomputing what is recorded. The model is the tiny random-init test architecture (tests/tiny_evaluate.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import samdemo.evaluate as evaluate
from samdemo.build import REPO_ROOT
from tests import tiny_evaluate

# 5 images: uneven shards (3 + 2); "points" and "random" draw from the per-image seeds
ARGS = ["evaluate", "--data", "scenes", "--limit", "5", "--attacks", "random,cross-prompt", "--prompts",
        "point,points,box", "--steps", "2", "--max-instances", "2", "--device", "cpu"]
OUTPUTS = ("results.csv", "report.md")


@pytest.fixture
def one(monkeypatch):
    """Runs the CLI in this process on the tiny model, one thread as each torchrun worker; returns a list of
    the attacks it crafted (image-level: one per attack row and image)."""
    monkeypatch.setattr(tiny_evaluate.factory, "load_engine", tiny_evaluate.tiny_engine)
    crafted = []
    real = evaluate.craft

    def counting(request, engine, images, *args):
        crafted.append(request.seed)
        return real(request, engine, images, *args)

    monkeypatch.setattr(evaluate, "craft", counting)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(out, *extra) -> int:
        from samdemo.__main__ import main

        return main([*ARGS, *extra, "--out", str(out)])

    run.crafted = crafted
    yield run
    torch.set_num_threads(threads)


def two(out) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.tiny_evaluate", *ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def results(out) -> dict:
    """results.json without its creation time."""
    content = json.loads((out / "results.json").read_text())
    del content["header"]["created"]
    return content


def log_lines(path) -> list[str]:
    return path.read_text().splitlines()


def names(lines: list[str]) -> list[str]:
    return [json.loads(line)["name"] for line in lines[1:]]


def interrupt(path) -> str:
    """Drop the last record of a log and leave half a line, as a process killed while writing would."""
    lines = log_lines(path)
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    return json.loads(lines[-1])["name"]


def test_two_processes_evaluate_like_one_and_resume(tmp_path, one):
    assert one(tmp_path / "one") == 0
    reference = results(tmp_path / "one")
    scenes = names(log_lines(tmp_path / "one" / evaluate.LOG_FILE))
    assert len(scenes) == 5 and len(one.crafted) == 5 * 2
    # not a degenerate comparison: the attack and the sampled points move the numbers
    assert len({r["miou_clean"] for r in reference["records"]}) == len(reference["records"])

    out = tmp_path / "two"
    two(out)
    assert results(out) == reference
    for name in OUTPUTS:
        assert (out / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert (out / "bars.png").stat().st_size > 0 and (out / "transfer.png").stat().st_size > 0
    rank0, rank1 = out / "per_image.rank0.jsonl", out / "per_image.rank1.jsonl"
    assert not (out / evaluate.LOG_FILE).exists()
    assert names(log_lines(rank0)) == scenes[0::2] and names(log_lines(rank1)) == scenes[1::2]
    assert log_lines(rank0)[0] == log_lines(rank1)[0] == log_lines(tmp_path / "one" / evaluate.LOG_FILE)[0]

    # interrupted while rank 1 wrote its last record: only that image is evaluated again (by rank 0, the
    # first of one image left); every record already written stays as it is (their "seconds" too)
    before = {path: log_lines(path) for path in (rank0, rank1)}
    lost = interrupt(rank1)
    for name in ("results.json", *OUTPUTS):
        (out / name).unlink()
    two(out)
    assert results(out) == reference
    assert log_lines(rank0)[:-1] == before[rank0] and names(log_lines(rank0))[-1] == lost
    assert log_lines(rank1) == before[rank1][:-1]  # the half line is gone

    # one process resumes the two processes' folder: it reads both logs and writes its own
    lost = interrupt(rank0)
    one.crafted.clear()
    assert one(out) == 0
    assert results(out) == reference
    assert len(one.crafted) == 2 and names(log_lines(out / evaluate.LOG_FILE)) == [lost]
    assert log_lines(rank0)[-1].startswith('{"name"') and len(log_lines(rank0)) == 5  # not its file: left alone
    one.crafted.clear()
    assert one(out) == 0 and one.crafted == []  # everything recorded: nothing crafted
    assert results(out) == reference


def test_other_settings_in_a_rank_log_are_refused(tmp_path, one, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    header = {"settings": {"model": "sam-small", "eps": 4.0}}
    (out / "per_image.rank1.jsonl").write_text(json.dumps(header) + "\n")
    assert one(out) != 0
    err = capsys.readouterr().err
    assert "other settings (differing:" in err and "per_image.rank1.jsonl" in err
    assert not (out / evaluate.LOG_FILE).exists() and one.crafted == []


@pytest.mark.parametrize("text, expected", [
    ('{"h": 1}\n{"name": "a"}', '{"h": 1}\n{"name": "a"}\n'),  # complete but unterminated: ended
    ('{"h": 1}\n{"name": "a"}\n{"na', '{"h": 1}\n{"name": "a"}\n'),  # half a line: dropped
    ('{"h": 1}\n{"name": "a"}\n{"na\n', '{"h": 1}\n{"name": "a"}\n'),
    ("", '{"h": 1}\n'),  # new: the settings line
])
def test_prepare_log(tmp_path, text, expected):
    path = tmp_path / "per_image.rank0.jsonl"
    path.write_text(text)
    evaluate._prepare_log(path, {"h": 1})
    assert path.read_text() == expected and list(tmp_path.iterdir()) == [path]


def test_log_files_order(tmp_path):
    for name in ("per_image.rank10.jsonl", "per_image.rank2.jsonl", "per_image.jsonl", "per_image.rankx.jsonl",
                 "per_image.rank0.jsonl.tmp"):
        (tmp_path / name).write_text("")
    assert [p.name for p in evaluate.log_files(tmp_path)] == ["per_image.jsonl", "per_image.rank2.jsonl",
                                                              "per_image.rank10.jsonl"]
