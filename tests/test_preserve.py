"""Preservation: the preserve file formats, the built-in set, the manifest record, and the KL term doing its
job: with a very large weight a fine-tune keeps the base's distributions on the preserve set (measured)."""

from __future__ import annotations

import json

import pytest

from tokenlens.errors import TokenlensError
from tokenlens.models.loading import load
from tokenlens.training.preserve import DEFAULT, load_preserve, mean_kl, read_texts
from tokenlens.training.trainer import train

# texts whose real-Qwen3-tokenizer ids are below 1024 (the small checkpoint's vocabulary)
KEEP = ["a b c d e f", "he is in the st", "on at a b", "a b c", "he is on the st"]


@pytest.fixture(scope="module")
def keep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keep") / "keep.txt"
    path.write_text("# comment\n" + "\n".join(KEEP) + "\n\n")
    return path


def test_formats(tmp_path, keep_file):
    assert read_texts(keep_file) == KEEP
    probes = tmp_path / "p.jsonl"
    probes.write_text('{"prompt": "a b", "expect": "unchanged"}\n{"text": "c d"}\n')
    assert read_texts(probes) == ["a b", "c d"]
    assert len(read_texts("default")) >= 200
    assert read_texts("default") == read_texts(DEFAULT)
    for content, message in (("", "no passages"), ('{"completion": "x"}\n', "prompt or text")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(content)
        with pytest.raises(TokenlensError, match=message):
            read_texts(bad)
    with pytest.raises(TokenlensError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")


def test_bad_weight_is_refused_before_anything(small_checkpoint, small_data, tmp_path):
    for weight in (-1.0, float("nan"), True):
        with pytest.raises(TokenlensError, match="preserve_weight"):
            train(
                load(str(small_checkpoint)),
                "lora",
                small_data,
                tmp_path / "o",
                preserve="x",
                preserve_weight=weight,
            )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["lora", "bias"])  # the adapter switched off / the cached base
def test_large_weight_keeps_the_base_on_the_preserve_set(
    method, small_checkpoint, small_data, keep_file, tmp_path
):
    kls = {}
    for weight in (0.0, 1000.0):
        loaded = load(str(small_checkpoint))
        base = load(str(small_checkpoint)).model
        out = tmp_path / f"w{weight:g}"
        train(
            loaded,
            method,
            small_data,
            out,
            steps=20,
            lr=0.01,
            seed=1,
            preserve=keep_file,
            preserve_weight=weight,
        )
        kept = load_preserve(keep_file, loaded.tokenizer, 64, 1024)
        kls[weight] = mean_kl(base, load(str(out)).model, kept)
        manifest = json.loads((out / "tokenlens-manifest.json").read_text())["preserve"]
        assert manifest["file"] == str(keep_file) and manifest["weight"] == weight
        assert manifest["n_texts"] == len(KEEP) and len(manifest["sha256"]) == 64
        assert ("adapter switched off" in manifest["base"]) == (method == "lora")
    assert kls[0.0] > 0.005, kls  # the fine-tune moves the preserve set (measured: 0.016) ...
    assert kls[1000.0] < kls[0.0] / 5, kls  # ... the term holds it near the base (measured: 84x, 12x less)
