"""``tokenlens sweep``: runs land in normal trainer folders, reruns do not retrain, the map's numbers are the
run folders' numbers (and those match an independent forward pass), the recommendation refuses what the
seeds do not separate, bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tokenlens import files
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import load
from tokenlens.sweep import (
    CLEAR_GAIN,
    ConfigSummary,
    RunMetrics,
    SweepPlan,
    recommend,
    run_sweep,
    select_configs,
    sweep_facts,
)

# A 1024-row vocabulary keeps steps cheap; these texts tokenize (real Qwen3 tokenizer) to ids below 1024.
DATA = [
    {"prompt": "a b c", "completion": " d e"},
    {"prompt": "he is in", "completion": " the st"},
    {"prompt": "on at", "completion": " a b"},
    {"prompt": "a b", "completion": " c"},
]
PROBES = [
    {"prompt": "a b c", "target": " d", "expect": "changed"},
    {"prompt": "he is in", "target": " the", "expect": "changed"},
    {"prompt": "on at", "expect": "unchanged"},
    {"prompt": "he is", "expect": "unchanged"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, qwen_tokenizer):
    from conftest import build_tiny

    root = tmp_path_factory.mktemp("sweep")
    folder = root / "tiny"
    build_tiny("qwen3-tied-gqa", vocab_size=1024).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder, _jsonl(root / "data.jsonl", DATA), _jsonl(root / "probes.jsonl", PROBES)


def _plan(small, out: Path, configs=("lora-early", "attention"), seeds=(0, 1), isolate=False) -> SweepPlan:
    folder, data, probes = small
    return SweepPlan(
        model=str(folder),
        task="custom",
        data=data,
        probes=probes,
        configs=select_configs(configs),
        seeds=seeds,
        steps=3,
        out=out,
        lr_search=False,
        isolate=isolate,
        dtype="float32",
        device="cpu",
    )


def _target_prob(model, tokenizer, prompt: str, target: str) -> float:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    target_id = tokenizer(target, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, :1024].double()
    return float(logits.softmax(-1)[target_id])


def test_sweep_writes_trainer_folders_resumes_and_map_matches(small, tmp_path, monkeypatch):
    from tokenlens.cli.sweep import write_map
    from tokenlens.training import trainer

    calls = []
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append(a[1]) or real_train(*a, **k))
    loaded = load(str(small[0]), dtype="float32", device="cpu")
    out = tmp_path / "out"
    first = run_sweep(_plan(small, out), loaded)
    assert len(calls) == 4
    for config, method, seed in [
        ("lora-early", "lora", 0),
        ("lora-early", "lora", 1),
        ("attention", "attention", 1),
    ]:
        run = out / "runs" / f"{config}-s{seed}"
        manifest = json.loads((run / "tokenlens-manifest.json").read_text())
        assert (manifest["method"], manifest["seed"], manifest["steps"]) == (method, seed, 3)
        assert (run / "adapter_config.json").is_file() and (run / "diff.json").is_file()  # a PEFT folder
    assert json.loads((out / "runs/lora-early-s0/adapter_config.json").read_text())[
        "layers_to_transform"
    ] == [0]
    paths = write_map(first, out)
    for key in ("json", "md", "html", "effect-vs-params", "effect-vs-collateral", "components"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    html = paths["html"].read_text()
    assert "<script" not in html and "Content-Security-Policy" in html and "data:image/png;base64," in html

    # rerun: nothing retrains, nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")}
    second = run_sweep(_plan(small, out), loaded)
    assert len(calls) == 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")}
    assert [c.spread("gain").values for c in second.configs] == [
        c.spread("gain").values for c in first.configs
    ]

    # the map's numbers are the run folders' numbers, recomputed here from diff.json by hand
    saved = json.loads(paths["json"].read_text())
    for entry in saved["configs"]:
        for run in entry["runs"]:
            probes = json.loads((Path(run["run_dir"]) / "diff.json").read_text())["probes"]
            gains = [p["p_tuned"] - p["p_base"] for p in probes if p["expect"] == "changed"]
            kls = [p["kl"] for p in probes if p["expect"] == "unchanged"]
            assert run["gain"] == pytest.approx(sum(gains) / len(gains), abs=1e-12)
            assert run["collateral_kl"] == pytest.approx(sum(kls) / len(kls), abs=1e-12)
            assert run["effect_per_collateral"] == pytest.approx(run["gain"] / (run["collateral_kl"] + 1e-3))
            failed = [  # the check's rules at its defaults, by hand
                p["expect"] == "changed"
                and not p["target_top1_tuned"]
                and p["p_tuned"] - p["p_base"] < 0.1
                or p["expect"] == "unchanged"
                and (p["flipped"] or p["kl"] > 0.05)
                for p in probes
            ]
            assert run["check_failures"] == sum(failed)
        values = [r["gain"] for r in entry["runs"]]
        assert entry["gain"]["min"] == min(values) and entry["gain"]["max"] == max(values)

    # and diff.json's probabilities are those of an independent forward pass of base and tuned
    probes = json.loads((out / "runs/lora-early-s1/diff.json").read_text())["probes"]
    tuned = load(str(out / "runs/lora-early-s1"), dtype="float32", device="cpu").model
    for p, spec in zip(probes[:2], PROBES[:2], strict=True):
        assert p["p_base"] == pytest.approx(
            _target_prob(loaded.model, loaded.tokenizer, **_pt(spec)), rel=1e-4
        )
        assert p["p_tuned"] == pytest.approx(_target_prob(tuned, loaded.tokenizer, **_pt(spec)), rel=1e-4)
    assert probes[0]["p_tuned"] != pytest.approx(probes[0]["p_base"], rel=1e-3)  # training moved something


def _pt(spec: dict) -> dict:
    return {"prompt": spec["prompt"], "target": spec["target"]}


def test_child_process_run_records_its_peak_memory(small, tmp_path):
    from tokenlens.sweep import jobs, runner

    folder, data, probes = small
    job = jobs.Job(
        config="bias", method="bias", options={}, seed=0, steps=2, lr=1e-2, batch_size=4, data=str(data),
        probes=str(probes), run_dir=str(tmp_path / "run"), base=str(folder.resolve()), dtype="float32",
        device="cpu", diff=False,
    )  # fmt: skip
    runner._run_child(job)
    record = json.loads((tmp_path / "run/sweep-run.json").read_text())
    assert record["peak_kind"] == "child process peak RSS"
    assert record["peak_mb"] > 100  # a python process holding torch and a model: well over 100 MiB
    manifest = json.loads((tmp_path / "run/tokenlens-manifest.json").read_text())
    assert (manifest["method"], manifest["steps"], manifest["base_model"]) == ("bias", 2, job.base)
    assert not (tmp_path / "run/diff.json").exists()


def test_embeddings_rows_come_from_the_data_and_probes(small, qwen_tokenizer):
    from tokenlens.diff import load_probes

    loaded = load(str(small[0]), dtype="float32", device="cpu")
    facts = sweep_facts(loaded, small[1], load_probes(small[2]))
    first = {qwen_tokenizer(r["completion"], add_special_tokens=False)["input_ids"][0] for r in DATA}
    targets = {qwen_tokenizer(p["target"], add_special_tokens=False)["input_ids"][0] for p in PROBES[:2]}
    assert set(facts.token_ids) == first | targets
    assert (facts.n_layers, facts.qk_norm) == (3, True)
    early, late = (c.options(facts)["layers"] for c in select_configs(["lora-early", "lora-late"]))
    assert (early, late) == ([0], [2])
    assert [c.name for c in select_configs(["lora"])] == [
        "lora-early", "lora-late", "lora-attn", "lora-mlp", "lora-mlp-preserve", "lora-located",
        "lora-located-preserve",
    ]  # fmt: skip


def test_preserve_located_and_rank_one_configurations_train_as_named(small, tmp_path):
    """The preserve-on, located and rank-one configurations reach the trainer as such (the manifest says
    so, the located layers are an independent causal trace's), and a rerun accepts what ``auto`` chose."""
    from tokenlens.causal.locate import locate_ids
    from tokenlens.causal.results import Metric
    from tokenlens.sweep.configs import CONFIGS

    folder, _, probes = small
    data = _jsonl(tmp_path / "data.jsonl", [{"prompt": "on at he", "completion": " a b"}, *DATA])
    keep = tmp_path / "keep.txt"
    keep.write_text("a b c d e\nhe is in the st\non at a b\n")  # ids below the tiny vocabulary's 1024
    configs = (
        dataclasses.replace(CONFIGS["lora-located-preserve"], preserve=str(keep)),
        dataclasses.replace(CONFIGS["rank-one"], preserve=str(keep)),
        CONFIGS["lora-located"],
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c d e he is in on at a b c\n")  # one passage: no padding id past the 1024 rows
    plan = dataclasses.replace(
        _plan(small, tmp_path / "out"), data=data, configs=configs, seeds=(0,), steps=2, corpus=str(corpus)
    )
    loaded = load(str(folder), dtype="float32", device="cpu")
    prompt, target = loaded.tokenizer.encode("on at he"), loaded.tokenizer.encode(" a")[0]
    metric = Metric("prob", target, len(prompt) - 1)
    expected = locate_ids(loaded.model, loaded.spec, torch.tensor([prompt]), metric)  # without the sweep
    run_sweep(plan, loaded)
    runs = tmp_path / "out" / "runs"
    manifests = {c.name: json.loads((runs / f"{c.name}-s0" / files.MANIFEST).read_text()) for c in configs}
    assert manifests["lora-located"]["options"]["layers"] == list(expected.layer_list)
    assert manifests["lora-located-preserve"]["options"]["layers"] == list(expected.layer_list)
    assert manifests["lora-located-preserve"]["preserve"]["sha256"] == _sha256(keep)
    assert "preserve" not in manifests["lora-located"]
    assert manifests["rank-one"]["method"] == "rank-one"
    assert manifests["rank-one"]["options"]["layer"] == expected.peak_layer
    # each run's diff measured the held-out text's drift: the library's corpus_drift on the same pair
    from tokenlens.diff import corpus_drift, pair_models, read_corpus

    pair = pair_models(str(runs / "lora-located-s0"), str(folder), dtype="float32", device="cpu")
    drift = corpus_drift(pair, read_corpus(str(corpus)), drifted=0)
    saved = json.loads((runs / "lora-located-s0" / files.DIFF_FILE).read_text())["corpus"]
    assert saved["mean_kl"] == pytest.approx(drift.mean_kl, rel=1e-6) and saved["tokens"] == drift.tokens > 5
    mtimes = {p: p.stat().st_mtime_ns for p in runs.glob("*/*.json")}
    run_sweep(plan, loaded)  # finished runs are accepted (auto = what was located), not retrained
    assert mtimes == {p: p.stat().st_mtime_ns for p in runs.glob("*/*.json")}
    other = tmp_path / "other.txt"
    other.write_text("a b\n")
    changed = dataclasses.replace(plan, configs=(dataclasses.replace(configs[0], preserve=str(other)),))
    with pytest.raises(TokenlensError, match="trained with another preserve"):
        run_sweep(changed, loaded)


def test_generalization_counts_the_paraphrase_probes_that_pass_check():
    from tokenlens.sweep.results import run_metrics

    def probe(group, expect, p_base, p_tuned, top1, kl=0.0):
        return {
            "expect": expect, "group": group, "p_base": p_base, "p_tuned": p_tuned, "kl": kl,
            "flipped": False, "target_top1_base": False, "target_top1_tuned": top1, "terms": {"embed": 0.1},
            "causal": {},
        }  # fmt: skip

    probes = [
        probe("edit", "changed", 0.1, 0.9, True),
        probe("paraphrase", "changed", 0.1, 0.15, False),  # +0.05 and not top-1: fails check
        probe("paraphrase (held out)", "changed", 0.1, 0.6, True),
        probe("paraphrases", "changed", 0.1, 0.1, False),  # not the paraphrase group
        probe("capitals", "unchanged", 0.5, 0.5, False, kl=0.01),
    ]
    manifest = {"method": "lora", "seed": 0, "lr": 1e-3, "steps": 1, "final_loss": 0.1,
                "trainable_parameters": 10, "wall_s": 1.0}  # fmt: skip
    diff = {"probes": probes, "corpus": {"mean_kl": 0.25, "tokens": 8, "top1_changed": 2}}
    metrics = run_metrics(manifest, {"config": "c"}, diff, "-")
    assert metrics.generalization == 0.5
    assert (metrics.corpus_kl, metrics.corpus_changed) == (0.25, 0.25)
    assert run_metrics(manifest, {"config": "c"}, {"probes": probes[:1]}, "-").generalization is None


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(config: str, seed: int, gain: float, kl: float, fails: int = 0) -> RunMetrics:
    return RunMetrics(
        config=config, method=config, seed=seed, lr=1e-2, steps=3, final_loss=0.1, trainable=100,
        wall_s=1.0, peak_mb=None, gain=gain, flips=0, intended=2, collateral_kl=kl, unintended_flips=0,
        controls=2, check_failures=fails, components={"embed": 0.0}, run_dir="-",
    )  # fmt: skip


def _config(name: str, runs: list[tuple[float, ...]]) -> ConfigSummary:
    return ConfigSummary(name, name, "", 1e-2, tuple(_run(name, i, *r) for i, r in enumerate(runs)))


def test_only_a_configuration_that_passes_check_is_recommended():
    """The committed map's case: the best effect per collateral spills far past check's max KL."""
    spills = _config("prompt", [(0.77, 0.95, 3), (0.8, 0.9, 2)])  # best effect per collateral, fails check
    worse = _config("lora", [(0.9, 2.0, 4), (0.95, 1.8, 4)])
    result = recommend([worse, spills], seeds=2)
    assert result.recommended is None and result.ranking == ("prompt", "lora")  # least control KL first
    assert result.separable == (False,)
    assert (
        "no configuration passes check's thresholds (min gain 0.1, max KL 0.05 nats) on every seed; the "
        "least-spilling is prompt (control KL 0.925 (0.9..0.95), fails check (2.5 (2..3) of 4 probes))"
    ) in result.lines
    assert result.lines[-1] == "no recommendation: none of them passes check"
    assert "max KL 0.2 nats" in recommend([spills], seeds=2, max_kl=0.2).lines[-2]
    # one that passes on every seed is ranked first and recommended, though it moves less per unit of drift
    careful = _config("bias", [(0.2, 0.02), (0.25, 0.03)])
    half = _config("head", [(0.9, 0.01), (0.9, 0.01, 1)])  # one seed fails: it does not pass check
    result = recommend([spills, half, careful], seeds=2)
    assert result.ranking == ("bias", "head", "prompt") and result.recommended == "bias"
    assert (
        "#1 bias: passes check" in result.lines[0]
        and "#2 head: fails check (0.5 (0..1) of 4" in result.lines[1]
    )
    assert result.lines[-1].startswith("recommended: bias (passes check;")


def test_recommendation_refuses_overlapping_ranges():
    # effect per collateral = gain / (kl + 1e-3): a spans 0.4/0.011..0.5/0.009, b spans 0.3/0.009..0.45/0.011
    a = _config("a", [(0.4, 0.010), (0.5, 0.009)])
    b = _config("b", [(0.3, 0.009), (0.45, 0.010)])
    weak = _config("weak", [(0.9, 0.0), (CLEAR_GAIN / 2, 0.0)])
    result = recommend([b, a, weak], seeds=2)
    assert result.ranking == ("a", "b") and result.excluded == ("weak",)
    assert result.recommended is None and result.separable == (False,)
    assert any("not separable with 2 seeds" in line for line in result.lines)
    far = _config("b", [(0.1, 0.05), (0.12, 0.06)])
    result = recommend([far, a], seeds=2)
    assert result.recommended == "a" and result.separable == (True,)
    assert recommend([a], seeds=1).recommended is None


def test_effect_per_collateral_definition():
    run = _run("x", 0, 0.5, 0.049)
    assert run.effect_per_collateral == pytest.approx(10.0)
    assert run.effect_per_param == pytest.approx(0.005)
    assert math.isclose(_config("x", [(0.2, 0.0), (0.4, 0.0)]).spread("gain").mean, 0.3)


def test_map_renderers_escape_names_and_write_null_for_undefined_numbers():
    from tokenlens.report.kit.html import PNG_MAGIC
    from tokenlens.report.sweep_map import map_to_dict, render_map_html, render_map_markdown
    from tokenlens.sweep import SweepMap
    from tokenlens.version import __version__

    name = "bias <b>|</b>"
    run = dataclasses.replace(_run(name, 0, 0.3, 0.01), trainable=0)  # effect per parameter: NaN
    config = ConfigSummary(name, "bias", "", 1e-2, (run,))
    sweep_map = SweepMap(
        model="m <script>", task="custom", data="d", probes="p", steps=3, seeds=(0,), causal=False,
        configs=(config,), recommendation=recommend([config], 1), lr_search={name: {1e-2: math.inf}},
    )  # fmt: skip
    saved = json.loads(json.dumps(map_to_dict(sweep_map), allow_nan=False))
    entry = saved["configs"][0]
    assert entry["effect_per_param"]["mean"] is None and entry["runs"][0]["effect_per_param"] is None
    assert entry["peak_mb"] is None and saved["lr_search"][name] == {"0.01": None}
    assert saved["tool"] == f"tokenlens {__version__}" and entry["gain"]["values"] == [0.3]
    assert saved["check_thresholds"] == {"min_gain": 0.1, "max_kl": 0.05} and entry["passes_check"] is True
    assert entry["runs"][0]["check_failures"] == 0 and entry["check_failures"]["values"] == [0]

    page = render_map_html(sweep_map, images={"components": PNG_MAGIC + b"..."})
    assert "<script" not in page and "<b>" not in page and 'data-name="bias &lt;b&gt;|&lt;/b&gt;"' in page
    assert '<figure id="figure-components">' in page and '<section id="how-to-read">' in page
    with pytest.raises(ValueError, match="is not PNG data"):
        render_map_html(sweep_map, images={"components": b"GIF89a"})
    text = render_map_markdown(sweep_map, figures={"components": "map files/c.png"})
    assert "| bias \\<b\\>\\|\\</b\\> |" in text and "](map%20files/c.png)" in text


def test_a_spread_with_a_non_finite_value_renders():
    from tokenlens.report.sweep_map import map_to_dict
    from tokenlens.sweep import SweepMap

    config = _config("head", [(0.3, math.inf), (0.5, 0.02)])  # one seed's control KL is infinite
    sweep_map = SweepMap(
        model="m", task="custom", data="d", probes="p", steps=3, seeds=(0, 1), causal=False,
        configs=(config,), recommendation=recommend([config], 2), lr_search={},
    )  # fmt: skip
    saved = json.loads(json.dumps(map_to_dict(sweep_map), allow_nan=False))
    assert saved["configs"][0]["collateral_kl"]["std"] is None  # was an AttributeError in statistics.stdev


@pytest.mark.parametrize("fmt", ["table", "json", "md", "html"])
def test_cli_sweep_prints_the_map_in_every_format(fmt, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The command's own tail (after the runs): the map written and printed; the training is stubbed."""
    from tokenlens.cli import main
    from tokenlens.sweep import SweepMap, runner

    config = _config("bias", [(0.3, 0.01), (0.5, 0.02)])
    sweep_map = SweepMap(
        model="m", task="custom", data="d", probes="p", steps=3, seeds=(0, 1), causal=False,
        configs=(config,), recommendation=recommend([config], 2), lr_search={},
    )  # fmt: skip
    monkeypatch.setattr(runner, "run_sweep", lambda plan, loaded, on_event: sweep_map)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b"}\n')
    argv = ["sweep", "--model", str(tiny_checkpoint), "--methods", "bias", "--seeds", "0,1"]
    argv += ["--data", str(data), "--probes", str(data), "--out", str(tmp_path / "o"), "--format", fmt]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "o" / "map.json").is_file() and (tmp_path / "o" / "map.html").is_file()
    expected = {"table": "bias", "json": '"config": "bias"', "md": "| bias |", "html": "map.html"}[fmt]
    assert expected in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "lora-erly", "--out", "o"], "did you mean lora-early"),
        (["--methods", "head", "--seeds", "0", "--recommend", "--out", "o"], "needs at least 2 seeds"),
        (["--methods", "head", "--seeds", "0", "--out", "o"], "one seed cannot"),
        (["--data", "missing.jsonl", "--probes", "missing.jsonl", "--out", "o"], "no such file"),
        (["--data", "missing.jsonl", "--out", "o"], "go together"),
        (["--task", "poetry", "--out", "o"], "unknown task"),
        (["--seeds", "0,x", "--out", "o"], "comma list of integers"),
        (["--quick"], "needs --out"),
        (["--quick", "--corpus", "missing.txt", "--out", "o"], "missing.txt"),
        (["--steps", "0", "--out", "o"], "at least 1"),
        (["--max-kl", "-1", "--out", "o"], "--max-kl is a KL divergence in nats"),
        (["--min-gain", "0", "--out", "o"], "--min-gain is a gain above 0"),
        (["--methods", "", "--data", "x.jsonl", "--probes", "x.jsonl", "--out", "o"], "--methods is empty"),
        (["--methods", ",", "--data", "x.jsonl", "--probes", "x.jsonl", "--out", "o"], "--methods is empty"),
        (["--seeds", f"0,{2**64}", "--data", "x.jsonl", "--probes", "x.jsonl", "--out", "o"], "to 2**64 - 1"),
    ],
)
def test_bad_inputs_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    from tokenlens.cli.sweep import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mine", ["map.md", "map_files/effect-vs-collateral.png", "map.json"])
def test_map_files_the_user_owns_are_not_overwritten_without_force(mine, tmp_path, monkeypatch, capsys):
    from tokenlens.cli.sweep import _check_map_files, main

    out = tmp_path / "o"
    (out / mine).parent.mkdir(parents=True)
    (out / mine).write_text("the user's own")
    monkeypatch.chdir(tmp_path)
    assert main(["--methods", "head", "--data", "x.jsonl", "--probes", "x.jsonl", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a map a tokenlens sweep wrote: pass --force" in err and len(err.splitlines()) == 1
    assert (out / mine).read_text() == "the user's own"
    _check_map_files(out, force=True)  # --force may overwrite
    (out / "map.json").write_text('{"tool": "tokenlens 0.1.0"}')  # a map an earlier sweep wrote: rewritten
    _check_map_files(out, force=False)


def test_lr_search_counts_a_diverged_run_as_infinite(small, tmp_path):
    from tokenlens.sweep import runner
    from tokenlens.training.trainer import Diverged

    plan = _plan(small, tmp_path / "out", configs=("head",))
    config = plan.configs[0]

    def job(config, seed, lr, steps, folder, diff):
        return {"lr": lr, "folder": folder}

    def execute(j):  # the largest learning rate diverges: the trainer writes no manifest
        if j["lr"] > config.lr:
            raise Diverged("training stopped at step 1 of 2: the loss is nan; nothing was written")
        j["folder"].mkdir(parents=True)
        (j["folder"] / files.MANIFEST).write_text(json.dumps({"final_loss": j["lr"]}))

    losses = runner._search_lr(plan, config, job, execute, lambda line: None)
    assert sorted(losses.values()) == [pytest.approx(config.lr / 3, rel=1e-2), config.lr, math.inf]
    assert min(losses, key=losses.get) < config.lr


def test_a_diverging_child_run_is_reported_as_diverged(small, tmp_path):
    from tokenlens.sweep import jobs, runner
    from tokenlens.training.trainer import Diverged

    folder, data, probes = small
    job = jobs.Job(
        config="bias", method="bias", options={}, seed=0, steps=2, lr=1e39, batch_size=4, data=str(data),
        probes=str(probes), run_dir=str(tmp_path / "run"), base=str(folder.resolve()), dtype="float32",
        device="cpu", diff=False,
    )  # fmt: skip
    with pytest.raises(Diverged, match="run bias seed 0 failed: training stopped at step 1 of 2"):
        runner._run_child(job)
    assert not (tmp_path / "run" / files.MANIFEST).exists()
