"""Benchmark suites: expansion, validation, dry runs, resume, aggregation, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pyro_clip.cli import main
from pyro_clip.errors import ConfigError
from pyro_clip.methods import get_method_class, known_methods
from pyro_clip.suite import (
    aggregate,
    dry_run,
    expand,
    headline,
    load_suite,
    markdown,
    mean_std,
    parse_suite,
    run_suite,
    write_results,
)
from pyro_clip.utils.io import write_json
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
#: every shipped suite config
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def _suite(tmp_path, **kw):
    data = {"name": "t", "backbone": TINY, "methods": ["zero-shot"], "shots": [1],
            "seeds": [1], "protocols": ["few-shot"], "out": str(tmp_path / "runs"), **kw}
    return parse_suite(data)


def test_expansion_counts_every_combination(tmp_path):
    methods = known_methods()
    suite = _suite(tmp_path, methods="all", protocols=["few-shot", "base-to-new"],
                   shots=[1, 2, 4, 8, 16], seeds=[1, 2, 3], datasets=["fashion-mnist"])
    runs = expand(suite)
    assert len(runs) == len(methods) * 2 * 5 * 3
    keys = {(r.protocol, r.method, r.shots, r.seed) for r in runs}
    assert len(keys) == len(runs)  # no duplicates
    assert len({r.out for r in runs}) == len(runs)  # one folder per run
    r = runs[0]
    assert r.config.progress is False and r.config.backbone == TINY


def test_method_seeds_override_the_seed_list_for_that_method_only(tmp_path):
    suite = _suite(tmp_path, methods=["zero-shot", "linear-probe"], protocols=["few-shot"],
                   shots=[1, 2], seeds=[1, 2, 3], method_seeds={"linear-probe": [7]})
    seeds = {}
    for r in expand(suite):
        seeds.setdefault(r.method, set()).add(r.seed)
    assert seeds == {"zero-shot": {1, 2, 3}, "linear-probe": {7}}
    assert len(expand(suite)) == 2 * 3 + 2 * 1
    with pytest.raises(ConfigError, match=r"method_seeds for \['nope'\]"):
        expand(_suite(tmp_path, method_seeds={"nope": [1]}))


def test_eval_datasets_per_protocol_and_overrides(tmp_path):
    suite = _suite(tmp_path, protocols=["few-shot", "base-to-new"],
                   eval_datasets={"few-shot": ["fashion-mnist-c"], "base-to-new": []},
                   method_options={"zero-shot": {}})
    by_protocol = {r.protocol: r.config.eval_datasets for r in expand(suite)}
    assert by_protocol == {"few-shot": ["fashion-mnist-c"], "base-to-new": []}
    shared = _suite(tmp_path, protocols=["few-shot", "base-to-new"],
                    eval_datasets=["fashion-mnist-c"])
    assert all(r.config.eval_datasets == ["fashion-mnist-c"] for r in expand(shared))


def test_options_from_demo_then_overrides(tmp_path):
    cls_opts = {m: get_method_class(m) for m in known_methods()}
    method = next((m for m, c in cls_opts.items() if c.default_options()), None)
    if method is None:
        pytest.skip("no registered method has options")
    key = next(iter(cls_opts[method].default_options()))
    value = cls_opts[method].default_options()[key]
    suite = _suite(tmp_path, methods=[method], method_options={method: {key: value}})
    cfg = expand(suite)[0].config
    assert cfg.options == {**(cls_opts[method].demo_options or {}), key: value}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"methods": ["no-such-method"]}, "unknown method(s) ['no-such-method']"),
        ({"method_options": {"nope": {}}}, "method_options for ['nope']"),
        ({"protocols": ["few_shot"]}, "unknown protocol"),
        ({"shots": [0]}, "shots must be >= 1"),
        ({"seeds": []}, "'seeds' is empty"),
        ({"colour": "red"}, "unknown suite key(s) ['colour']"),
        ({"shots": ["16"]}, "'shots' must be a list of int"),
    ],
)
def test_bad_configs_are_rejected_with_clear_messages(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        expand(_suite(tmp_path, **changes))
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"datasets": ["imagenette"]}, "unknown data set 'imagenette'"),
        ({"eval_datasets": ["mnist-c"]}, "unknown data set 'mnist-c'"),
        ({"datasets": ["imagenet-a"], "data_root": "/x"}, "evaluation-only"),
        ({"datasets": ["dtd"]}, "set data_root"),
        ({"method_options": {"zero-shot": {"lr": 1}}}, "has no option(s) ['lr']"),
        ({"backbone": "open_clip:NoSuchNet"}, "unknown open_clip model 'NoSuchNet'"),
        ({"backbone": "open_clip:ViT-B-16:nosuchtag"}, "no pretrained tag 'nosuchtag'"),
        ({"backbone": "resnet"}, "unknown backbone 'resnet'"),
    ],
)
def test_dry_run_rejects_config_errors(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        dry_run(_suite(tmp_path, **changes))
    assert needle in str(err.value)


def test_cli_unknown_method_exits_nonzero(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"methods": ["zero-shot", "co-op"], "backbone": TINY}))
    assert main(["suite", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) ['co-op']" in err and "registered methods" in err


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_dry_run_without_weights(path, tmp_path, capsys):
    root = tmp_path / "no-data"
    plan = dry_run(load_suite(path, data_root=str(root), out=str(tmp_path / "runs")))
    assert len(plan.runs) > 0 and plan.done == 0
    methods = {r.method for r in plan.runs}
    from pyro_clip.methods import get_method_class

    runnable = {m for m in known_methods()
                if plan.suite.backbone.startswith(get_method_class(m).requires_backbone)}
    if yaml.safe_load(path.read_text())["methods"] == "all":
        assert methods == runnable  # every method the backbone can run, none dropped
        assert plan.suite.backbone != "conse" or "kgcoop" in methods
    else:
        assert methods <= runnable
    if plan.suite.backbone == "conse":
        assert "maple" not in methods
    disk = [d for d in plan.suite.datasets if not d.startswith("fashion-mnist")]
    if disk:  # the paper protocols: missing data is a listed problem, not an exception
        assert any(str(root) in p for p in plan.problems)
    else:
        assert plan.problems == []
    assert f"{len(plan.runs)} runs" in plan.summary()
    assert "memory estimate per run" in plan.summary()
    groups = {(r.dataset, r.protocol) for r in plan.runs}
    assert {(e.dataset, e.protocol) for e in plan.estimates} == groups
    assert plan.too_large == []  # every shipped run fits its declared device
    # the CLI dry run prints the plan, each group's memory estimate, and exits 0
    assert main(["suite", str(path), "--dry-run", "--data-root", str(root),
                 "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "problem" in out or not disk
    assert "memory estimate per run" in out
    for dataset, protocol in groups:
        assert f"  {dataset}/{protocol} (" in out


def test_paper_configs_cover_the_protocols():
    dassl = {"imagenet", "caltech-101", "oxford_pets", "stanford_cars", "oxford_flowers",
             "food-101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"}
    b2n = load_suite(ROOT / "configs/paper/base_to_new.yaml")
    assert set(b2n.datasets) == dassl and b2n.shots == [16] and b2n.seeds == [1, 2, 3]
    assert b2n.protocols == ["base-to-new"]
    fs = load_suite(ROOT / "configs/paper/few_shot.yaml")
    assert set(fs.datasets) == dassl and fs.shots == [1, 2, 4, 8, 16]
    dg = load_suite(ROOT / "configs/paper/domain_generalisation.yaml")
    assert dg.datasets == ["imagenet"] and dg.shots == [16]
    assert set(dg.evals_for("few-shot")) == {"imagenet-v2", "imagenet-sketch", "imagenet-a",
                                             "imagenet-r"}
    for s in (b2n, fs, dg):
        assert s.backbone == "open_clip:ViT-B-16-quickgelu:openai"  # OpenAI weights: QuickGELU
        assert s.templates is None  # each data set's standard templates
    off = load_suite(ROOT / "configs/bench/offline.yaml")
    assert off.methods == "all" and off.shots == [1, 2, 4, 8, 16] and off.seeds == [1, 2, 3]
    assert off.backbone == "conse" and set(off.protocols) == {"few-shot", "base-to-new"}
    assert off.evals_for("few-shot") == ["fashion-mnist-c"]


def test_data_root_env_var_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_SUITE_TEST_DATA", str(tmp_path))
    suite = _suite(tmp_path, data_root="$PYRO_SUITE_TEST_DATA/x")
    assert suite.data_root == f"{tmp_path}/x"


# --- aggregation against hand-computed numbers -------------------------------------------

def _fake_metrics(acc, ece, nll, shift, auroc_msp, auroc_ent, fit):
    return {
        "test": {"accuracy": acc, "ece": ece, "nll": nll, "per_class_accuracy": [acc] * 2},
        "fashion-mnist-c": {"accuracy": shift, "ece": 0.5, "nll": 9.0},
        "ood": {"in_distribution": "test",
                "fashion-mnist-c": {"entropy": {"auroc": auroc_ent, "fpr95": 0.9},
                                    "msp": {"auroc": auroc_msp, "fpr95": 0.8}}},
        "fit_seconds": fit,
    }


def test_aggregation_mean_and_sample_std_by_hand(tmp_path):
    suite = _suite(tmp_path, seeds=[1, 2, 3], eval_datasets=["fashion-mnist-c"])
    runs = expand(suite)
    values = [(0.50, 0.10, 1.0, 0.30, 0.60, 0.70, 1.0),
              (0.60, 0.20, 2.0, 0.40, 0.70, 0.70, 2.0),
              (0.70, 0.30, 6.0, 0.50, 0.80, 0.70, 3.0)]
    for r, v in zip(runs, values, strict=True):
        write_json(r.out / "metrics.json", _fake_metrics(*v))
    (group,) = aggregate(runs)["groups"]
    m = group["metrics"]
    assert group["seeds"] == [1, 2, 3] and group["shots"] == 1
    # mean (0.5+0.6+0.7)/3 = 0.6; sample var ((-.1)^2+0+.1^2)/2 = 0.01 -> std 0.1
    assert m["accuracy"]["mean"] == pytest.approx(0.6)
    assert m["accuracy"]["std"] == pytest.approx(0.1)
    # nll 1, 2, 6: mean 3; deviations -2, -1, 3 -> var (4+1+9)/2 = 7
    assert m["nll"]["mean"] == pytest.approx(3.0)
    assert m["nll"]["std"] == pytest.approx(7 ** 0.5)
    assert m["ece"]["mean"] == pytest.approx(0.2)
    assert m["shift_accuracy"]["mean"] == pytest.approx(0.4)
    # the MSP score's AUROC is reported, not the entropy one
    assert m["ood_auroc"]["mean"] == pytest.approx(0.7)
    assert m["ood_auroc"]["std"] == pytest.approx(0.1)
    assert m["fit_seconds"]["mean"] == pytest.approx(2.0)
    table = markdown(aggregate(runs))
    assert "| zero-shot | 1 | 3 | 60.0 ± 10.0 | 0.200 ± 0.100 | 3.000 ± 2.646 |" in table
    assert "OOD AUROC" in table and "base" not in table.split("\n")[2]


def test_aggregation_base_to_new_and_missing_metrics(tmp_path):
    suite = _suite(tmp_path, seeds=[1, 2], protocols=["base-to-new"])
    runs = expand(suite)
    write_json(runs[0].out / "metrics.json", {
        "base": {"accuracy": 0.8, "ece": 0.1, "nll": 0.5},
        "new": {"accuracy": 0.4},
        "base_to_new": {"base": 0.8, "new": 0.4, "h": 2 * 0.8 * 0.4 / 1.2},
    })
    results = aggregate(runs)
    assert results["missing_runs"] == [str(runs[1].out)]
    (group,) = results["groups"]
    m = group["metrics"]
    assert m["h"]["mean"] == pytest.approx(0.64 / 1.2) and m["h"]["std"] is None
    assert m["accuracy"]["mean"] == pytest.approx(0.8)  # ID = base classes
    assert "ood_auroc" not in m and "shift_accuracy" not in m
    md = markdown(results)
    assert "| 53.3 |" in md and "OOD AUROC" not in md and "1 run(s) have no metrics" in md


def test_headline_reads_any_auroc_key_defensively():
    assert "ood_auroc" not in headline({"test": {"accuracy": 1.0}}, [])
    m = {"test": {"accuracy": 1.0}, "ood": {"shifted": {"energy_auroc": 0.42}}}
    assert headline(m, ["shifted"])["ood_auroc"] == 0.42


def test_mean_std_edge_cases():
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}
    assert mean_std([0.25]) == {"mean": 0.25, "std": None, "n": 1, "values": [0.25]}
    assert mean_std([1.0, 3.0])["std"] == pytest.approx(2 ** 0.5)


# --- execution ---------------------------------------------------------------------------

def test_resume_skips_runs_with_metrics_in_worker_processes(tmp_path):
    suite = _suite(tmp_path, seeds=[1, 2, 3])
    runs = expand(suite)
    sentinel = {"test": {"accuracy": 0.123}}
    write_json(runs[0].out / "metrics.json", sentinel)
    outcome = run_suite(suite, workers=2, progress=False)
    assert outcome.failures == {}
    assert outcome.skipped == 1 and set(outcome.seconds) == {str(r.out) for r in runs[1:]}
    assert json.loads((runs[0].out / "metrics.json").read_text()) == sentinel  # untouched
    assert all((r.out / "metrics.json").is_file() for r in runs[1:])
    again = run_suite(suite, workers=2, progress=False)
    assert again.skipped == 3 and again.seconds == {}


def test_tiny_suite_end_to_end(tmp_path, capsys):
    """zero-shot, 2 seeds, 1 shot, both protocols, tiny backbone, through the CLI."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "backbone": TINY, "methods": ["zero-shot"], "shots": [1],
        "seeds": [1, 2], "protocols": ["few-shot", "base-to-new"],
        "eval_datasets": {"few-shot": ["fashion-mnist-c"], "base-to-new": []},
        "out": str(tmp_path / "runs"), "results": str(tmp_path / "res" / "tiny"),
    }))
    assert main(["suite", str(path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert results["failures"] == {} and results["missing_runs"] == []
    groups = {g["protocol"]: g for g in results["groups"]}
    fs = groups["few-shot"]["metrics"]
    # zero-shot ignores the training shots: both seeds give identical test metrics
    assert fs["accuracy"]["n"] == 2 and fs["accuracy"]["std"] == pytest.approx(0.0)
    run1 = json.loads((tmp_path / "runs/fashion-mnist/few-shot/zero-shot/shots1/seed1/"
                       "metrics.json").read_text())
    assert fs["accuracy"]["mean"] == pytest.approx(run1["test"]["accuracy"])
    assert fs["ood_auroc"]["mean"] == pytest.approx(
        run1["ood"]["fashion-mnist-c"]["msp"]["auroc"])
    b2n = groups["base-to-new"]["metrics"]
    assert {"base", "new", "h"} <= set(b2n)
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "### fashion-mnist, few-shot" in md and "### fashion-mnist, base-to-new" in md
    # metrics-only diagnostics: no plots, no idata
    assert not (tmp_path / "runs/fashion-mnist/few-shot/zero-shot/shots1/seed1/plots").exists()
    # a re-run resumes: nothing left to do
    assert main(["suite", str(path), "--no-progress"]) == 0
    assert "0 run(s)" in capsys.readouterr().out


def test_failed_run_is_reported_and_suite_continues(tmp_path, capsys):
    # an option value the method rejects only when fitting would be method-specific; a data
    # set whose images are missing fails inside runner.run for every method alike
    suite = _suite(tmp_path, datasets=["folder"], data_root=str(tmp_path / "absent"))
    outcome = run_suite(suite, progress=False)
    (out,) = outcome.failures
    assert "does not exist" in outcome.failures[out]
    assert (Path(out) / "error.txt").is_file()
    json_path, _ = write_results(suite, outcome.runs, {"failures": outcome.failures})
    assert json.loads(json_path.read_text())["failures"] == outcome.failures


def test_speed_rows_pair_ratios_with_targets(tmp_path):
    from benchmarks.run_bench import speed_rows, speed_table

    write_json(tmp_path / "features.json", {
        "benchmark": "features", "machine": {"threads": 2}, "images": 128,
        "pipeline_vs_raw_ratio": 0.75, "target_pipeline_vs_raw": 0.9,
        "rerun_speedup": 120.0, "target_rerun_speedup": 50,
    })
    write_json(tmp_path / "kalman.json", {"benchmark": "kalman",
                                          "block": {"speedup_vs_full": 18.0}})
    write_json(tmp_path / "suite_offline.json", {"pipeline_ratio": 1.0})  # not a speed file
    write_json(tmp_path / "suite_executors.json", {  # a suite benchmark: a speed file
        "benchmark": "suite_executors", "ray_vs_local_throughput_ratio": 0.95,
        "target_ray_vs_local_throughput": 0.9})
    rows = speed_rows(tmp_path)
    got = {(r["benchmark"], r["measure"]): (r["value"], r["target"]) for r in rows}
    assert got == {("features", "pipeline_vs_raw_ratio"): (0.75, 0.9),
                   ("features", "rerun_speedup"): (120.0, 50),
                   ("kalman", "block.speedup_vs_full"): (18.0, None),
                   ("suite_executors", "ray_vs_local_throughput_ratio"): (0.95, 0.9)}
    table = speed_table(rows)
    assert "| features | pipeline_vs_raw_ratio | 0.75 | 0.9 | no |" in table
    assert "| features | rerun_speedup | 120 | 50 | yes |" in table


def test_several_shifted_sets_get_one_column_each(tmp_path):
    sets = ["imagenet-v2", "imagenet-a"]
    suite = _suite(tmp_path, seeds=[1, 2], eval_datasets=sets)
    runs = expand(suite)
    for r, (v2, a) in zip(runs, [(0.6, 0.2), (0.8, 0.4)], strict=True):
        write_json(r.out / "metrics.json", {"test": {"accuracy": 0.7},
                                            "imagenet-v2": {"accuracy": v2},
                                            "imagenet-a": {"accuracy": a}})
    results = aggregate(runs)
    m = results["groups"][0]["metrics"]
    assert m["shift_accuracy"]["mean"] == pytest.approx(0.7)  # the first set
    assert m["accuracy@imagenet-v2"]["mean"] == pytest.approx(0.7)
    assert m["accuracy@imagenet-a"]["mean"] == pytest.approx(0.3)
    assert m["accuracy@imagenet-a"]["std"] == pytest.approx(0.02 ** 0.5)  # (0.1^2*2)/1
    head = markdown(results).split("\n")[2]
    assert "imagenet-v2 acc | imagenet-a acc" in head and "shifted acc" not in head
