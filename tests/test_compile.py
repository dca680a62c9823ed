"""trainer.compile: a bounded number of graphs that stops growing after the first epoch, and a
run that hits dynamo's recompile limit says so.

Counted with the aot_eager backend (dynamo's graphs and guards, without inductor's code
generation, which would take minutes on this CPU): what recompiles is decided by the guards,
before any backend sees a graph.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ssam.train.resolvers  # noqa: F401  (the declared options and the configs' resolvers)
from ssam.data import missing_data_message
from ssam.train.run import run

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST"),
]


def compiled_run(run_dir: Path, overrides: list[str], *, epochs: int = EPOCHS) -> tuple[dict, list[dict]]:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                # 4 batches of 32 and a short one of 8: the last batch has a shape of its own.
                "dataset.train_size=136",
                "dataset.test_size=40",
                "batch_size=32",
                f"epochs={epochs}",
                "trainer.progress_bar=false",
                "trainer.compile=true",
                "trainer.compile_backend=aot_eager",
                *overrides,
            ],
        )
    summary = run(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


# One graph for training batches, one more once the short last batch makes the batch size
# dynamic, one for evaluation (no_grad); under accumulation the micro-batches' sizes and
# offsets add guards of their own (sizes 1, below and from 16, at offset 0 or not). Without
# the fixes, SAM took 5 (a graph for the ascent with its BatchNorm statistics frozen) and
# tensor-masked SSAM-F 6 (and more with every new mask, as requires_grad switched with it); the
# latter has both of SAM's causes, so SAM alone is not run.
@pytest.mark.parametrize(
    "overrides, most_graphs",
    [
        (
            [
                "optimizer=ssam_f",
                "optimizer.granularity=tensor",
                "optimizer.norm=masked",
                "optimizer.num_samples=16",
                "optimizer.update_freq=1",
            ],
            3,
        ),
        (["optimizer=sam", "trainer.accumulate_steps=3", "optimizer.ascent_fraction=0.5"], 6),
    ],
    ids=["ssam_f_tensor_masked", "sam_accumulated_part_ascent"],
)
def test_the_graphs_stay_few_and_stop_growing_after_the_first_epoch(tmp_path, overrides, most_graphs, capsys):
    summary, rows = compiled_run(tmp_path, overrides)
    graphs = [row["compiled_graphs"] for row in rows]
    assert graphs == [graphs[0]] * EPOCHS, graphs
    assert summary["compiled_graphs"] == graphs[0] <= most_graphs < torch._dynamo.config.cache_size_limit
    assert "warning: trainer.compile" not in capsys.readouterr().out


def test_a_run_that_hits_the_recompile_limit_says_so(tmp_path, monkeypatch, capsys):
    # One graph a function: the short last batch's shape already needs a second.
    monkeypatch.setattr(torch._dynamo.config, "cache_size_limit", 1)
    summary, _ = compiled_run(tmp_path, ["optimizer=sgd"], epochs=1)
    out = capsys.readouterr().out
    # recompile_limit, called cache_size_limit in older torch (2.6), which later torch keeps as an alias
    assert re.search(
        r"warning: trainer.compile: torch._dynamo hit config.(recompile|cache_size)_limit \(1\)", out
    )
    assert "now runs uncompiled" in out
    assert summary["compiled_graphs"] == 1
