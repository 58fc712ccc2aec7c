"""Worst case per object over an attack ensemble, and paired bootstrap gains (samdemo.protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from samdemo.protocol import paired_gain_ci, pooled_bootstrap, worst_case_gains, worst_case_rows, worst_case_sweep


def row(defense, mode, attack, iou_gt, iou_clean=None, evaluated_with="box"):
    return {"defense": defense, "mode": mode, "attack": attack, "crafted_with": "none",
            "evaluated_with": evaluated_with, "iou_gt": iou_gt, "iou_clean": iou_clean or iou_gt}


def test_worst_case_is_per_object_not_the_worst_average():
    # attack a is worst on object 0, attack b on object 1: per object 0.1 and 0.2 (mean 0.15), while
    # the worst *average* attack has mean 0.45
    entry = {"instances": 2, "attacked": [
        row("none", "white-box", "a", [0.1, 0.9], [0.3, 0.8]),
        row("none", "white-box", "b", [0.8, 0.2], [0.7, 0.4])]}
    (worst,) = worst_case_rows(entry)
    assert worst["iou_gt"] == [0.1, 0.2] and np.mean(worst["iou_gt"]) < 0.45
    assert worst["iou_clean"] == [0.3, 0.4]  # from the same attack that gave the worst IoU vs GT
    assert worst["mode"] == "worst-case" and worst["ensemble"] == ["white-box:a@none", "white-box:b@none"]


def test_worst_case_of_a_defense_spans_transfer_and_adaptive_but_not_other_defenses():
    entry = {"instances": 1, "attacked": [
        row("none", "white-box", "a", [0.05]),
        row("adapter", "transfer", "a", [0.6]),
        row("adapter", "adaptive", "a", [0.4]),
        row("adapter", "adaptive", "a", [0.7], evaluated_with="point")]}
    worst = {(r["defense"], r["evaluated_with"]): r["iou_gt"] for r in worst_case_rows(entry)}
    assert worst == {("none", "box"): [0.05], ("adapter", "box"): [0.4], ("adapter", "point"): [0.7]}


def test_paired_bootstrap_is_tighter_than_unpaired_when_images_share_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 30)
    reference = [[d] for d in difficulty]
    treated = [[d + 0.05 + rng.normal(0, 0.01)] for d in difficulty]
    gain, low, high = paired_gain_ci(treated, reference, seed=0)
    assert 0.04 < gain < 0.06 and 0 < low < gain < high
    _, t_low, t_high = pooled_bootstrap(np.array([v[0] for v in treated]), np.ones(30), seed=0)
    assert high - low < (t_high - t_low) / 5  # the shared difficulty cancels


def test_paired_gain_needs_the_same_objects():
    with pytest.raises(ValueError, match="same images and objects"):
        paired_gain_ci([[0.1, 0.2]], [[0.1]], seed=0)


def test_worst_case_gains_against_the_original_model():
    entries = [{"instances": 1, "attacked": [row("none", "white-box", "a", [0.1 * i]),
                                             row("adapter", "adaptive", "a", [0.1 * i + 0.2])]} for i in range(5)]
    entries.append({"instances": 0, "skipped": "no instance"})
    (gain,) = worst_case_gains(entries, "none", seed=0)
    assert gain["defense"] == "adapter" and gain["gain"] == pytest.approx(0.2)
    assert gain["gain_ci"] == pytest.approx([0.2, 0.2]) and gain["images"] == 5


def sweep_entry(name, clean, none_iou, adapter_iou):
    return {"name": name, "instances": len(clean),
            "clean": {"none": {"box": clean}, "adapter": {"box": [c + 0.1 for c in clean]}},
            "attacked": [row("none", "white-box", "a", none_iou), row("adapter", "adaptive", "a", adapter_iou),
                         row("adapter", "transfer", "a", [1.0] * len(clean)),
                         row("other", "adaptive", "a", [0.0] * len(clean))]}


def test_worst_case_sweep_has_the_clean_point_and_one_worst_case_per_epsilon():
    entries = {
        2.0: [sweep_entry("a", [0.8, 0.6], [0.5, 0.3], [0.6, 0.5]), sweep_entry("b", [0.7], [0.4], [0.6])],
        8.0: [sweep_entry("a", [0.8, 0.6], [0.1, 0.0], [0.3, 0.2]), sweep_entry("b", [0.7], [0.0], [0.2])],
    }
    curves = worst_case_sweep(entries, ["none", "adapter"], "none", seed=0)
    got = {(r["eps255"], r["defense"]): r for r in curves}
    assert sorted(got) == [(0.0, "adapter"), (0.0, "none"), (2.0, "adapter"), (2.0, "none"),
                           (8.0, "adapter"), (8.0, "none")]  # "other" is not asked for
    assert got[0.0, "none"]["miou_gt"] == pytest.approx(0.7) and got[0.0, "adapter"]["gain"] == pytest.approx(0.1)
    assert got[2.0, "none"]["miou_gt"] == pytest.approx(0.4)
    # the adapter's worst case is its adaptive row, not the weaker transfer row
    assert got[8.0, "adapter"]["miou_gt"] == pytest.approx(0.7 / 3, abs=1e-6)
    assert got[8.0, "adapter"]["gain"] == pytest.approx(0.6 / 3, abs=1e-6) and "gain" not in got[8.0, "none"]
    low, high = got[8.0, "adapter"]["gain_ci"]
    assert low <= got[8.0, "adapter"]["gain"] <= high
    assert all(r["images"] == 2 and r["objects"] == 3 for r in curves)


def test_worst_case_sweep_refuses_runs_on_different_images():
    entries = {2.0: [sweep_entry("a", [0.8], [0.5], [0.6])], 8.0: [sweep_entry("b", [0.8], [0.1], [0.3])]}
    with pytest.raises(ValueError, match="same images"):
        worst_case_sweep(entries, ["none", "adapter"], "none", seed=0)


def test_sweep_plot_has_one_panel_per_prompt_and_one_line_per_defense():
    from samdemo.plots import eps_sweep_plot

    entries = {e: [sweep_entry("a", [0.8, 0.6], [0.5 / e, 0.3 / e], [0.6 / e, 0.5 / e])] for e in (2.0, 8.0)}
    for entry in entries[2.0] + entries[8.0]:
        for name in ("none", "adapter"):
            entry["clean"][name]["point"] = entry["clean"][name]["box"]
        entry["attacked"] += [dict(r, evaluated_with="point") for r in entry["attacked"]]
    curves = worst_case_sweep(entries, ["none", "adapter"], "none", seed=0)
    figure = eps_sweep_plot(curves, {"none": "original model"}, prompts=["point", "box"])
    assert [ax.get_title() for ax in figure.axes] == ["point", "box"]
    box = figure.axes[1]
    assert [line.get_label() for line in box.get_lines()] == ["original model", "adapter"]
    np.testing.assert_allclose(box.get_lines()[0].get_xdata(), [0, 2, 8])
    np.testing.assert_allclose(box.get_lines()[0].get_ydata(), [0.7, 0.2, 0.05], atol=1e-6)


def test_the_paper_attacks_effect_on_the_worst_case_counts_the_objects_it_lowers():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_results import paper_attack_effect

    ensemble = [{"name": "a", "instances": 2, "attacked": [row("none", "white-box", "mask", [0.2, 0.6]),
                                                           row("adapter", "adaptive", "mask", [0.5, 0.5])]},
                {"name": "b", "instances": 0}]
    paper = [{"name": "a", "instances": 2, "attacked": [row("none", "white-box", "key-channel", [0.4, 0.2]),
                                                        row("adapter", "adaptive", "key-channel", [0.9, 0.8])]},
             {"name": "b", "instances": 0}]
    table = paper_attack_effect(ensemble, paper, ["box"])
    # original model: object 1 drops from 0.6 to 0.2 (mean 0.4 -> 0.2); the adapter: nothing lower
    assert table[2] == "| original model | 40.0 -> 20.0 (1 of 2) |"
    assert table[3] == "| adapter | 50.0 -> 50.0 (0 of 2) |"
    with pytest.raises(ValueError, match="same images"):
        paper_attack_effect(ensemble, paper[:1] + [{"name": "c", "instances": 1, "attacked": []}], ["box"])


def test_a_sweep_of_one_model_keeps_the_other_models_table(tmp_path):
    """scripts/eps_sweep.py --models M rewrites the whole generated section: every model's table stays."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import eps_sweep

    prompts = ("point", "box", "coarse-mask")

    def entry(name, attack, original_iou, adapter_iou):
        rows = [dict(row(defense, mode, attack, [iou], evaluated_with=t))
                for t in prompts for defense, mode, iou in [("none", "white-box", original_iou),
                                                            ("sam-small-adapter", "adaptive", adapter_iou)]]
        return {"name": name, "instances": 1, "attacked": rows,
                "clean": {d: {t: [0.8] for t in prompts} for d in ("none", "sam-small-adapter")}}

    # our attacks and the paper's: one ensemble per epsilon (at 8 the paper's sets the original's worst case)
    for eps, ours, paper in [(2, (0.5, 0.6), (0.7, 0.7)), (8, (0.2, 0.3), (0.1, 0.9))]:
        for folder, attack, ious in [(tmp_path / "eps-sweep" / "sam-small", "mask", ours),
                                     (tmp_path / "eps-sweep" / "paper-attack" / "sam-small", "key-channel", paper)]:
            (folder / f"eps{eps}").mkdir(parents=True)
            lines = [{"settings": {"attacks": [attack]}}, entry("a", attack, *ious)]
            (folder / f"eps{eps}" / "per_image.jsonl").write_text("\n".join(json.dumps(e) for e in lines))
    assert eps_sweep.main(["--tables-only", "--models", "sam2-small", "--eps", "2,8", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "### sam-small" in text and "| 2 | 50.0 / 60.0 / +10.0" in text and "| 8 | 10.0 / 30.0 / +20.0" in text
    assert "### sam2-small\n\n(not swept yet" in text

    # a new adapter at one budget, the old one at another: refused, not drawn as one curve
    for eps, digest, run in [(e, d, r) for e, d in [(2, "old"), (8, "new")] for r in ("", "paper-attack")]:
        log = tmp_path / "eps-sweep" / run / "sam-small" / f"eps{eps}" / "per_image.jsonl"
        lines = log.read_text().splitlines()
        settings = json.loads(lines[0])
        settings["settings"]["defenses"] = [{"label": "none", "digest": None},
                                            {"label": "sam-small-adapter", "digest": digest}]
        log.write_text("\n".join([json.dumps(settings), *lines[1:]]))
    with pytest.raises(SystemExit, match="other adapters at different budgets"):
        eps_sweep.main(["--tables-only", "--models", "sam2-small", "--eps", "2,8", "--out", str(tmp_path)])
    assert (tmp_path / "eps-sweep" / "sam-small" / "eps_sweep_sam-small.png").exists()


def test_runs_of_other_attacks_merge_into_one_ensemble_and_nothing_else_does(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_results import ensemble_records, merge_runs

    defenses = [{"label": "none", "method": "none", "ref": None, "digest": None}]
    settings = {"model": "sam-small", "adapters": [], "data": "scenes", "attacks": ["mask"], "prompts": ["box"],
                "eps": 8.0, "steps": 100, "generator": "apgd", "seed": 0, "max_instances": 4, "max_side": 1024,
                "restarts": 1, "defenses": defenses}

    def write(name, settings, iou, images=("a",)):
        folder = tmp_path / name
        folder.mkdir()
        entries = [{"name": n, "instances": 1, "clean": {"none": {"box": [0.9]}},
                    "attacked": [row("none", "white-box", settings["attacks"][0], [iou])]} for n in images]
        (folder / "per_image.jsonl").write_text("\n".join(json.dumps(e) for e in [{"settings": settings}, *entries]))
        return folder

    ours = write("ours", settings, 0.5)
    paper = write("paper", settings | {"attacks": ["key-channel"]}, 0.2)
    merged_settings, entries = merge_runs([ours, paper])
    assert merged_settings["attacks"] == ["mask", "key-channel"]
    assert [r["attack"] for r in entries[0]["attacked"]] == ["mask", "key-channel"]
    worst = next(r for r in ensemble_records(merged_settings, entries) if r["mode"] == "worst-case")
    assert worst["miou_gt"] == pytest.approx(0.2) and worst["clean_miou_gt"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="more than its attacks: eps"):
        merge_runs([ours, write("other-eps", settings | {"attacks": ["key-channel"], "eps": 4.0}, 0.2)])
    with pytest.raises(ValueError, match="same images"):
        merge_runs([ours, write("other-images", settings | {"attacks": ["key-channel"]}, 0.2, images=("b",))])
    with pytest.raises(ValueError, match="no evaluate run"):
        merge_runs([ours, tmp_path / "missing"])


def test_restart_check_compares_object_by_object_with_the_headline(tmp_path):
    """scripts/restart_check.py --tables-only: the worst case of the headline, of the restart run and of both (per
    object the lower), the objects the restarts lowered, the adapter's gains; a run of other settings is refused."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import restart_check
    import shutil

    base = {"model": "sam-small", "adapters": ["checkpoints/sam-small-adapter"], "data": "scenes", "prompts": ["box"],
            "eps": 8.0, "steps": 100, "generator": "apgd", "seed": 0, "max_instances": 4, "max_side": 1024,
            "defenses": [{"label": "none"}, {"label": "sam-small-adapter"}]}

    def write(folder, settings, attack, original, adapter, control=None):
        folder.mkdir(parents=True)
        rows = [row("none", "white-box", attack, original), row("sam-small-adapter", "adaptive", attack, adapter)]
        if control:  # the headline also has the controls: left out of the comparison
            rows.append(row("sam-small-adapter-shuffled", "adaptive", attack, control))
        entry = {"name": "a", "instances": 2, "attacked": rows,
                 "clean": {d: {"box": [0.8, 0.8]} for d in ("none", "sam-small-adapter")}}
        (folder / "per_image.jsonl").write_text(json.dumps({"settings": settings}) + "\n" + json.dumps(entry) + "\n")

    headline = base | {"attacks": ["mask"], "restarts": 1}
    write(tmp_path / "sam-small", headline, "mask", [0.4, 0.6], [0.5, 0.5], control=[0.0, 0.0])
    write(tmp_path / "paper-attack" / "sam-small", headline | {"attacks": ["key-channel"]}, "key-channel",
          [0.5, 0.5], [0.6, 0.6])
    restarted = base | {"attacks": ["mask"], "restarts": 2}
    write(tmp_path / "restarts" / "sam-small", restarted, "mask", [0.1, 0.6], [0.5, 0.48])
    write(tmp_path / "restarts" / "paper-attack" / "sam-small", restarted | {"attacks": ["key-channel"]},
          "key-channel", [0.5, 0.7], [0.6, 0.6])
    assert restart_check.main(["--model", "sam-small", "--tables-only", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "restarts" / "sam-small" / "restarts.json").read_text())
    worst = {r["defense"]: r for r in saved["worst_case"]}
    # the original: headline per object (0.4, 0.5), restarts (0.1, 0.6), both (0.1, 0.5); one object lowered
    assert worst["none"]["1 restart"] == pytest.approx(0.45) and worst["none"]["restarts"] == pytest.approx(0.35)
    assert worst["none"]["both"] == pytest.approx(0.3) and worst["none"]["lowered"] == 1
    # the adapter: 0.48 < 0.5 by less than the threshold
    assert worst["sam-small-adapter"]["both"] == pytest.approx(0.49) and worst["sam-small-adapter"]["lowered"] == 0
    assert set(worst) == {"none", "sam-small-adapter"}  # the control is not compared
    assert saved["gains"]["both"]["box"]["gain"] == pytest.approx(0.19)
    assert "| original model | box | 45.0 | 35.0 | 30.0 | 1 of 2 |" in (
        tmp_path / "restarts" / "sam-small" / "restarts.md").read_text()

    shutil.rmtree(tmp_path / "restarts")
    write(tmp_path / "restarts" / "sam-small", restarted | {"eps": 4.0}, "mask", [0.1, 0.6], [0.5, 0.48])
    write(tmp_path / "restarts" / "paper-attack" / "sam-small", restarted | {"eps": 4.0, "attacks": ["key-channel"]},
          "key-channel", [0.5, 0.7], [0.6, 0.6])
    with pytest.raises(SystemExit, match="differ from the headline in eps"):
        restart_check.main(["--model", "sam-small", "--tables-only", "--out", str(tmp_path)])


def test_compare_defenses_gives_paired_gains_between_any_two_defenses(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_defenses

    rows = [row("none", "white-box", "mask", [0.1, 0.3]), row("a", "adaptive", "mask", [0.5, 0.5]),
            row("a", "transfer", "mask", [0.4, 0.9]), row("b", "adaptive", "mask", [0.6, 0.6])]
    entry = {"name": "x", "instances": 2, "attacked": rows,
             "clean": {d: {"box": [0.8, 0.8]} for d in ("none", "a", "b")}}
    (tmp_path / "per_image.jsonl").write_text(json.dumps({"settings": {"seed": 0}}) + "\n" + json.dumps(entry) + "\n")
    assert compare_defenses.main([str(tmp_path), "--reference", "a", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    # worst case per object: a (0.4, 0.5) -> 45.0, b 60.0, none 20.0; gains over a only
    assert "| a | 80.0 / 45.0 |" in text and "| b | a | +15.0 [+15.0, +15.0] |" in text
    assert "| none | a | -25.0 [-25.0, -25.0] |" in text and "| a | b |" not in text
    with pytest.raises(SystemExit) as exit_info:
        compare_defenses.main([str(tmp_path), "--reference", "c"])
    assert exit_info.value.code == 2 and "no defense c in the run" in capsys.readouterr().err


def test_compare_defenses_merges_runs_that_differ_only_in_their_adapters(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_defenses

    def defense(label, digest):
        return {"label": label, "method": "svd", "ref": f"runs/{label}", "digest": digest}

    def write(folder, labels, attacked, original=(0.1, 0.3), digest="d1"):
        folder.mkdir()
        settings = {"seed": 0, "steps": 100, "adapters": [f"runs/{label}" for label in labels],
                    "defenses": [{"label": "none", "method": "none", "ref": None, "digest": None}]
                    + [defense(label, digest) for label in labels]}
        rows = [row("none", "white-box", "mask", list(original))] + [
            row(label, "adaptive", "mask", values) for label, values in zip(labels, attacked)]
        entry = {"name": "x", "instances": 2, "attacked": rows,
                 "clean": {d: {"box": [0.8, 0.8]} for d in ("none", *labels)},
                 "grey": {d: {"box": [0.0, 0.0]} for d in ("none", *labels)}}
        (folder / "per_image.jsonl").write_text(json.dumps({"settings": settings}) + "\n" + json.dumps(entry) + "\n")
        return str(folder)

    shipped = write(tmp_path / "shipped", ["a"], [[0.5, 0.5]])
    candidate = write(tmp_path / "candidate", ["b"], [[0.6, 0.7]])
    assert compare_defenses.main([shipped, candidate, "--reference", "a"]) == 0
    text = capsys.readouterr().out
    assert "| b | a | +15.0 [+15.0, +15.0] |" in text and "| none | a | -30.0 [-30.0, -30.0] |" in text
    # the original model's records differ (another thread count): the runs are not comparable
    other = write(tmp_path / "other", ["b"], [[0.6, 0.7]], original=(0.1, 0.2))
    with pytest.raises(SystemExit) as exit_info:
        compare_defenses.main([shipped, other])
    assert exit_info.value.code == 2 and "disagree on none" in capsys.readouterr().err
    # one label for two different adapters
    clash = write(tmp_path / "clash", ["a"], [[0.6, 0.7]], digest="d2")
    with pytest.raises(SystemExit) as exit_info:
        compare_defenses.main([shipped, clash])
    assert "two different adapters are labelled a" in capsys.readouterr().err
    # another budget
    settings_line, entry_line = Path(candidate, "per_image.jsonl").read_text().splitlines()
    settings = json.loads(settings_line)
    settings["settings"]["steps"] = 10
    Path(candidate, "per_image.jsonl").write_text(json.dumps(settings) + "\n" + entry_line + "\n")
    with pytest.raises(SystemExit):
        compare_defenses.main([shipped, candidate])
    assert "in more than its adapters: steps" in capsys.readouterr().err
