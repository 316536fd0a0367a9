"""Config composition: every command the docs show composes, presets chosen on the command line survive any
experiment or budget, and the precedence is the one docs/pipeline.md states."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import run
import yaml
from typer.testing import CliRunner

from newsrec_dist.cli import app
from newsrec_dist.config import ConfigError, SynthConfig, load_config, masked_command

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
JOB_SCRIPT = re.compile(r"(?:^|\s)(jobs/\w+\.py)(?:\s|$)")
SECTION_GROUPS = ("data", "eval", "graphs", "node2vec", "encoder", "generate", "model", "train", "cluster")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every `newsrec ...` and `jobs/*.py` command in a ```bash block, and the Makefile's
    (a synopsis with placeholders goes in a ```text block)."""
    found = []
    for path in DOCS:
        for language, block in FENCE.findall(path.read_text()):
            if language != "bash":
                continue
            for line in block.replace("\\\n", " ").splitlines():
                for command in line.split("#", 1)[0].split(";"):
                    command = command.strip()
                    if command.startswith("newsrec ") or JOB_SCRIPT.search(command):
                        found.append((path.name, command))
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "$(BIN)/newsrec " in line:
            found.append(("Makefile", line.strip().replace("$(BIN)/", "")))
    return found


def job_arguments(command: str) -> tuple[str, list[str]]:
    """(script, its arguments) of a command that runs a jobs/*.py script under a launcher."""
    words = shlex.split(command)
    index = next(i for i, word in enumerate(words) if JOB_SCRIPT.search(f" {word} "))
    return words[index], words[index + 1:]


def composed(arguments: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["--show-config", *arguments])
    assert result.exit_code == 0, f"newsrec {shlex.join(arguments)}:\n{result.output}"
    return yaml.safe_load(result.output)


def composed_by_job(script: str, arguments: list[str]) -> dict[str, Any]:
    """The job script run for real, told by the environment to print its config instead of working."""
    result = run([sys.executable, script, *arguments], cwd=ROOT,
                            timeout=120, env={**os.environ, "NEWSREC_SHOW_CONFIG": "1"})
    assert result.returncode == 0, f"{script} {shlex.join(arguments)}:\n{result.stdout}{result.stderr}"
    return yaml.safe_load(result.stdout)


def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Paths as tuples: Spark keys hold dots."""
    out = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        out += leaves(value, path) if isinstance(value, dict) and value else [(path, value)]
    return out


def lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def preset_values(group: str, preset: str) -> list[tuple[tuple[str, ...], Any]]:
    """The values a preset file writes itself, as paths from the config root (interpolations left out)."""
    own = yaml.safe_load((ROOT / "conf" / group / f"{preset}.yaml").read_text()) or {}
    own.pop("defaults", None)
    return [((group, *path), value) for path, value in leaves(own) if not (isinstance(value, str) and "${" in value)]


def set_explicitly(arguments: list[str], path: tuple[str, ...]) -> bool:
    keys = {argument.split("=", 1)[0].lstrip("+~") for argument in arguments if "=" in argument}
    return any(".".join(path).startswith(key + ".") or ".".join(path) == key for key in keys) or \
        any(argument.startswith("--") for argument in arguments if path[-1] in argument.replace("-", "_"))


COMMANDS = documented_commands()


def test_the_docs_show_the_cluster_presets() -> None:
    """The presets whose values the composition test guards appear in the documented commands."""
    shown = " ".join(command for _, command in COMMANDS)
    for needle in ("encoder=glm4_9b", "train=ddp", "node2vec=cluster", "graphs=cluster", "experiment=lecop data=mind",
                   "experiment=quickstart"):
        assert needle in shown, needle
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_composes_and_keeps_chosen_presets(where: str, command: str) -> None:
    if command.startswith("newsrec "):
        arguments = shlex.split(command)[1:]
        cfg = composed(arguments)
    else:
        script, arguments = job_arguments(command)
        cfg = composed_by_job(script, arguments)
    chosen = [argument.split("=", 1) for argument in arguments if "=" in argument
              and argument.split("=", 1)[0] in SECTION_GROUPS]
    for group, preset in chosen:
        for path, value in preset_values(group, preset):
            if not set_explicitly(arguments, path):
                assert lookup(cfg, path) == value, f"{where}: `{command}` lost {'.'.join(path)}={value!r}"
    if "experiment=" not in command and "budget=" not in command:
        assert cfg["budget"] == "full" and cfg["experiment_name"] == "default", command


# (command, values it must compose to): the precedence of docs/pipeline.md, case by case.
PRECEDENCE = [
    ("config", {"budget": "full", "train.max_steps": -1, "train.epochs": 20, "train.early_stopping.patience": 2,
                "seeds": [], "node2vec.epochs": 5,
                "node2vec.walks_per_node": 10, "encoder.finetune.steps": 40, "generate.task.max_news": None,
                "stages": []}),
    ("config encoder=glm4_9b", {"encoder.finetune.steps": 2000, "encoder.finetune.batch_size": 512}),
    ("config experiment=quickstart", {"budget": "demo", "train.max_steps": 100, "train.batch_size": 32,
                                      "encoder.finetune.steps": 25, "node2vec.epochs": 2, "generate.task.max_news": 12}),
    ("config experiment=quickstart encoder=glm4_9b", {"encoder.finetune.steps": 2000, "train.max_steps": 100}),
    ("config experiment=quickstart train=ddp", {"train.max_steps": -1, "train.batch_size": 128,
                                                "train.strategy": "ddp", "encoder.finetune.steps": 25}),
    ("config experiment=quickstart train=gpu", {"train.max_steps": -1, "train.batch_size": 128}),
    ("config experiment=quickstart node2vec=cluster", {"node2vec.epochs": 5, "node2vec.walks_per_node": 10,
                                                       "train.max_steps": 100}),
    ("config experiment=quickstart encoder=glm4_9b encoder.finetune.steps=7", {"encoder.finetune.steps": 7}),
    ("config experiment=quickstart train=ddp train.max_steps=60", {"train.max_steps": 60, "train.batch_size": 128}),
    ("config experiment=quickstart budget=full", {"train.max_steps": -1, "encoder.finetune.steps": 40}),
    ("config experiment=lecop data=mind", {"budget": "full", "train.max_steps": -1, "encoder.finetune.steps": 40,
                                           "node2vec.epochs": 5, "generate.task.max_news": None,
                                           "data.name": "mind-small"}),
    ("config experiment=lecop budget=small", {"train.epochs": 20, "train.early_stopping.patience": 2,
                                              "train.max_steps": -1, "node2vec.epochs": 2, "seeds": [1, 2, 3]}),
    ("config experiment=popk experiment=null", {"experiment_name": "default", "stages": []}),
    ("encoder finetune --steps 9 encoder=glm4_9b", {"encoder.finetune.steps": 9, "encoder.finetune.batch_size": 512}),
    ("data prepare --scale tiny", {"data.name": "synth-tiny", "data.raw_dir": "runs/default/raw/synth-tiny"}),
]


@pytest.mark.parametrize(("command", "expected"), PRECEDENCE, ids=[c for c, _ in PRECEDENCE])
def test_precedence(command: str, expected: dict[str, Any]) -> None:
    cfg = composed(shlex.split(command))
    for key, value in expected.items():
        assert lookup(cfg, tuple(key.split("."))) == value, f"{command}: {key}"


def test_experiments_leave_budget_keys_to_the_budget() -> None:
    """An experiment that set a budget's key would beat `budget=small` on the command line."""
    budgeted = {path for name in ("small", "demo") for path, _ in leaves(
        {k: v for k, v in (yaml.safe_load((ROOT / "conf/budget" / f"{name}.yaml").read_text())).items()
         if k not in ("defaults", "budget")})}
    for path in sorted((ROOT / "conf/experiment").glob("*.yaml")):
        own = {path for path, _ in leaves(yaml.safe_load(path.read_text()))}
        assert not own & budgeted, f"{path.name} sets {sorted(own & budgeted)}"


@pytest.mark.parametrize(("override", "message"), [
    ("train=foo", "train=foo: train has no preset 'foo'; choose one of ddp, default, gpu, ray"),
    ("experiment=nope", "experiment has no preset 'nope'; choose one of genre, lecop, pfr, popk, quickstart"),
    ("trian.max_steps=3", "no config section 'trian' (did you mean 'train'?)"),
    ("train.nope=1", "train.nope=1: Key 'nope' not in 'TrainConfig'"),
    ("data.synth.affinity_weight=strong", "data.synth.affinity_weight=strong: Value 'strong' of type 'str' could not be "
                                          "converted to Float"),
])
def test_a_bad_group_key_or_value_fails_with_our_message(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config([override])
    assert message in str(error.value) and "full_key" not in str(error.value)
    result = CliRunner().invoke(app, ["config", override])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_run_without_an_experiment_names_what_to_do() -> None:
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    assert "name an experiment" in result.output and "stages=[synth,prepare,eval,report]" in result.output


def test_printed_config_masks_secrets() -> None:
    result = CliRunner().invoke(app, ["config", "+cluster.ray.env_vars.HF_TOKEN=hf_live_value",
                                      "+cluster.ray.env_vars.DATA_ROOT=/opt/data",
                                      'generate.backend.base_url="https://user:hunter2@llm.example/v1?sig=abc&model=x"'])
    assert result.exit_code == 0, result.output
    for secret in ("hf_live_value", "hunter2", "sig=abc"):
        assert secret not in result.output
    printed = yaml.safe_load(result.output)
    assert printed["cluster"]["ray"]["env_vars"] == {"HF_TOKEN": "***", "DATA_ROOT": "/opt/data"}
    assert printed["generate"]["backend"]["base_url"] == "https://***@llm.example/v1?sig=***&model=x"
    assert printed["generate"]["backend"]["api_key_env"] == "OPENAI_API_KEY"  # a variable's name, not a secret
    assert printed["generate"]["sampling"]["max_tokens"] == 512  # a count of tokens, not a token


def test_command_lines_mask_secret_overrides() -> None:
    command = ("newsrec train 'graphs.spark.conf.spark.authenticate.secret=s3cr3t x' +cluster.ray.env_vars.HF_TOKEN=hf_1 "
               "generate.sampling.max_tokens=64 generate.backend.api_key_env=MY_KEY "
               "generate.backend.base_url=https://u:pw@h/v1?token=t0k")
    shown = masked_command(command)
    for secret in ("s3cr3t", "hf_1", "pw@", "t0k"):
        assert secret not in shown
    assert "secret=***' " in shown and "max_tokens=64" in shown
    for key, secret in (("accessToken", True), ("clientSecret", True), ("db.password", True), ("AWS_ACCESS_KEY", True),
                        ("private_key", True), ("max_tokens", False), ("sort_key", False), ("passes", False),
                        ("author", False), ("token_budget_env", False)):
        assert (masked_command(f"x.{key}=v4lue") == f"x.{key}=***") is secret, key and "api_key_env=MY_KEY" in shown and "HF_TOKEN=***" in shown


@pytest.mark.parametrize(("generate", "overrides", "expected"),
                         [("default", [], SynthConfig().cold_history_max), ("default", ["eval.cold_history_max=7"], 7),
                          ("default", ["data.synth.cold_history_max=2"], 2), ("openai", ["eval.cold_history_max=7"], 7),
                          ("transformers", ["eval.cold_history_max=7"], 7)])
def test_one_new_user_definition_serves_generation_and_evaluation(generate: str, overrides: list[str],
                                                                  expected: int) -> None:
    """GENRE's generator writes for new users and the evaluation reports them: both read one value."""
    cfg = load_config([f"generate={generate}", *overrides])
    assert cfg.generate.task.cold_history_max == cfg.eval.cold_history_max == expected
