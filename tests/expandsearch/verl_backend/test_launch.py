"""``expandsearch train --backend verl``: our training configs as verl 0.9.1 Hydra overrides, composed with verl's
own ``ppo_trainer.yaml`` and checked by verl's validation; the printed and the executed command; the refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from agent_env import AGENT_LOOP_NAME
from expandsearch.cli import main
from expandsearch.config import ConfigError, load_config
from expandsearch.rl.config import TrainConfig
from expandsearch.verl_backend import launch
from expandsearch.verl_backend.launch import (
    FORWARDED_ENV,
    VerlConfigError,
    compose_verl_config,
    hydra_value,
    validate_verl_config,
    verl_command,
    verl_overrides,
)
from expandsearch.verl_backend.settings import CUSTOM_KEY, AgentLoopSettings, read_settings
from train_configs import CONFIG_DIR

VERL_DIR = CONFIG_DIR / "verl"
VERL_TRAIN_CONFIGS = sorted(
    path for path in VERL_DIR.glob("*.yaml") if isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)
)
"""The TrainConfig files of train_configs/verl/ (agent_loops.yaml, a list, is verl's registry, not one of ours)."""
GRPO = VERL_DIR / "qwen2.5-3b_grpo.yaml"
PPO = VERL_DIR / "qwen2.5-3b_ppo.yaml"
SQUEEZER = "openai:http://127.0.0.1:8001/v1#Qwen/Qwen2.5-7B-Instruct"

Composed = tuple[TrainConfig, Any, list[str]]


@pytest.fixture(scope="module")
def composed() -> dict[str, Composed]:
    """Each shipped verl config: ours, verl's composition of its overrides, and the verl checks that passed."""
    result = {}
    for path in VERL_TRAIN_CONFIGS:
        config = load_config(TrainConfig, path)
        verl_config = compose_verl_config(verl_overrides(config))
        result[path.name] = (config, verl_config, validate_verl_config(verl_config))
    return result


def grpo_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, GRPO, overrides)


# --- the shipped configs ---------------------------------------------------------------------------------------


def test_the_shipped_verl_configs_are_the_grpo_and_ppo_recipes() -> None:
    assert [path.name for path in VERL_TRAIN_CONFIGS] == ["qwen2.5-3b_grpo.yaml", "qwen2.5-3b_ppo.yaml"]
    assert (VERL_DIR / "agent_loops.yaml").is_file()


@pytest.mark.parametrize("path", VERL_TRAIN_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_verl_config_translates_composes_and_validates(path: Path, composed: dict[str, Composed]) -> None:
    _, verl_config, checks = composed[path.name]
    assert checks[:4] == [
        "OmegaConf.to_container(resolve=True)",
        "verl.utils.config.validate_config",
        "RolloutConfig",
        "AlgoConfig",
    ]
    assert "agent-loop registry" in checks
    agent = verl_config.actor_rollout_ref.rollout.agent
    registry = yaml.safe_load(Path(agent.agent_loop_config_path).read_text(encoding="utf-8"))
    assert agent.default_agent_loop == AGENT_LOOP_NAME
    assert AGENT_LOOP_NAME in [entry["name"] for entry in registry]


def test_grpo_config_has_search_r1s_values_in_verls_units(composed: dict[str, Composed]) -> None:
    config, verl_config, _ = composed[GRPO.name]
    actor, rollout = verl_config.actor_rollout_ref.actor, verl_config.actor_rollout_ref.rollout
    assert verl_config.data.train_batch_size == 512
    assert rollout.n == 5
    assert actor.ppo_mini_batch_size == 256  # our 1280 episodes are 256 prompts of 5 samples
    assert actor.ppo_micro_batch_size_per_gpu == 8
    assert actor.optim.lr == pytest.approx(1e-6)
    assert actor.optim.lr_warmup_steps == math.ceil(573 / 2)  # two optimizer updates per verl step
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.001, "low_var_kl")
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.2)
    assert verl_config.algorithm.adv_estimator == "grpo"
    assert verl_config.algorithm.use_kl_in_reward is False
    assert verl_config.critic.enable is False
    assert (rollout.prompt_length, rollout.response_length) == (1024, 3000)
    assert verl_config.data.max_response_length == 3000
    assert rollout.multi_turn.enable is True
    assert rollout.multi_turn.max_assistant_turns == 4
    assert rollout.calculate_log_probs is True
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.do_sample) == (0, False)
    assert list(verl_config.data.val_files) == ["data/nq/test.parquet", "data/hotpotqa/test.parquet"]
    trainer = verl_config.trainer
    assert (trainer.total_training_steps, trainer.save_freq, trainer.test_freq) == (1005, 50, 50)
    assert (trainer.nnodes, trainer.n_gpus_per_node) == (1, 8)
    assert trainer.default_local_dir == f"{config.run_dir}/checkpoints"
    assert list(trainer.logger) == ["console", "wandb"]
    assert (trainer.use_v1, trainer.resume_mode) == (False, "disable")
    assert verl_config.actor_rollout_ref.model.enable_gradient_checkpointing is True


def test_ppo_config_trains_a_critic_with_gae(composed: dict[str, Composed]) -> None:
    config, verl_config, checks = composed[PPO.name]
    critic, actor = verl_config.critic, verl_config.actor_rollout_ref.actor
    assert verl_config.algorithm.adv_estimator == "gae"
    assert critic.enable is True
    assert critic.model.path == config.policy.model == verl_config.actor_rollout_ref.model.path
    assert critic.optim.lr == pytest.approx(1e-5)
    assert actor.optim.lr == pytest.approx(1e-6)
    assert critic.cliprange_value == 0.5
    assert critic.ppo_mini_batch_size == actor.ppo_mini_batch_size == 256
    assert critic.ppo_micro_batch_size_per_gpu == 8
    assert verl_config.actor_rollout_ref.rollout.n == 1
    assert verl_config.algorithm.use_kl_in_reward is True
    assert verl_config.algorithm.kl_ctrl.kl_coef == pytest.approx(0.001)
    assert actor.use_kl_loss is False
    assert verl_config.actor_rollout_ref.rollout.response_length == 3000
    assert "verl.utils.config.validate_config" in checks  # with the critic's dataclass, since GAE needs one


@pytest.mark.parametrize("path", VERL_TRAIN_CONFIGS, ids=lambda path: path.name)
def test_agent_loop_settings_round_trip_through_verls_config(path: Path, composed: dict[str, Composed]) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    config, verl_config, _ = composed[path.name]
    expected = AgentLoopSettings.from_train_config(config)
    assert expected.squeezer == SQUEEZER
    node = verl_config.actor_rollout_ref.rollout.custom[CUSTOM_KEY]
    assert AgentLoopSettings.from_mapping(OmegaConf.to_container(node, resolve=True)) == expected
    assert read_settings(verl_config) == expected  # as the agent loop reads them on a worker
    rollout = omega_conf_to_dataclass(verl_config.actor_rollout_ref.rollout)  # verl's RolloutConfig.custom
    assert AgentLoopSettings.from_mapping(rollout.custom[CUSTOM_KEY]) == expected


# --- values Hydra must read back exactly ------------------------------------------------------------------------

AWKWARD = [
    SQUEEZER,
    "http://a:1/x?q=1,2&r=[3]",
    'it\'s "quoted"',
    "back\\slash\\",
    "#hash: colon, comma = equals {braces}",
    " spaced ",
    "null",
    "true",
    "1e-3",
    "ünïcode",
    "",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_hydra_value_reads_back_as_the_same_value(text: str) -> None:
    value = {"s": text, "items": [text, 1, 2.5, None, True], "nested": {"s": text}}
    parsed = OverridesParser.create().parse_override(f"+key={hydra_value(value)}").value()
    assert OmegaConf.to_container(OmegaConf.create({"key": parsed}), resolve=True)["key"] == value


def test_awkward_settings_and_paths_survive_composition() -> None:
    base = grpo_config()
    config = dataclasses.replace(
        base,
        run_dir="runs/a 'b' \"c\"",
        squeezer=AWKWARD[2] + AWKWARD[4],
        retriever=dataclasses.replace(base.retriever, urls=tuple(AWKWARD[:5])),
    )
    verl_config = compose_verl_config(verl_overrides(config))
    assert read_settings(verl_config) == AgentLoopSettings.from_train_config(config)
    assert verl_config.trainer.default_local_dir == "runs/a 'b' \"c\"/checkpoints"


def test_an_interpolation_in_a_value_is_refused() -> None:
    config = dataclasses.replace(grpo_config(), squeezer="openai:${oc.env:HOST}#m")
    with pytest.raises(VerlConfigError, match="interpolation"):
        verl_overrides(config)


# --- what verl's config and validation reject --------------------------------------------------------------------


def test_a_misspelled_extra_override_fails_composition_with_hydras_message() -> None:
    overrides = verl_overrides(grpo_config("verl.extra_overrides=[trainer.nnode=2]"))
    assert overrides[-1] == "trainer.nnode=2"
    with pytest.raises(VerlConfigError, match=r"Could not override 'trainer\.nnode'") as caught:
        compose_verl_config(overrides)
    assert "\n" not in str(caught.value)


def test_extra_overrides_come_last_and_win() -> None:
    config = grpo_config("verl.extra_overrides=[trainer.val_before_train=false, actor_rollout_ref.rollout.n=10]")
    verl_config = compose_verl_config(verl_overrides(config))
    assert verl_config.trainer.val_before_train is False
    assert verl_config.actor_rollout_ref.rollout.n == 10


def test_verls_own_validation_runs_after_composition() -> None:
    config = grpo_config("verl.extra_overrides=[actor_rollout_ref.actor.ppo_mini_batch_size=1024]")
    verl_config = compose_verl_config(verl_overrides(config))
    with pytest.raises(VerlConfigError, match=r"validate_config rejects the config: .*train_batch_size \(512\)"):
        validate_verl_config(verl_config)


def test_a_local_model_directory_is_loaded_by_verls_model_config(tiny_policy_dir: Path) -> None:
    config = load_config(TrainConfig, PPO, [f"policy.model={tiny_policy_dir}"])
    verl_config = compose_verl_config(verl_overrides(config))
    assert "HFModelConfig" in validate_verl_config(verl_config)
    assert verl_config.critic.model.path == str(tiny_policy_dir)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["policy.model=smollm2"], "verl loads a transformers model directory"),
        (["policy.model=/models/SmolLM2.Q8_0.gguf"], "verl loads a transformers model directory"),
        (["warm_start.kind=sft", "warm_start.sft.demonstrations=[demos.jsonl]"], "verl.trainer.sft_trainer"),
        (["policy.trainable=all_but_embeddings"], "set policy.trainable=all"),
        (["retriever.urls=[]", "retriever.index=data/index"], "absolute path every node can read"),
        (["verl.n_gpus_per_node=3"], "do not split evenly over the 3 GPUs"),
        (["algorithm.mini_batch_size=512"], "not a multiple of rollout.group_size 5"),
        (["algorithm.filter_groups.enable=true"], "set verl.use_v1=true"),
    ],
)
def test_what_verl_cannot_run_is_refused_with_what_to_do(overrides: list[str], fragment: str) -> None:
    with pytest.raises(VerlConfigError, match=r"^--backend verl cannot run this config: ") as caught:
        verl_overrides(grpo_config(*overrides))
    assert fragment in str(caught.value)


def test_filter_groups_becomes_verls_dapo_filter_on_the_reward() -> None:
    config = grpo_config("algorithm.filter_groups.enable=true", "verl.use_v1=true")
    filter_groups = compose_verl_config(verl_overrides(config)).algorithm.filter_groups
    assert (filter_groups.enable, filter_groups.metric) == (True, "reward")
    assert compose_verl_config(verl_overrides(grpo_config())).algorithm.filter_groups.enable is False


def test_an_absolute_index_is_accepted_as_every_nodes_path() -> None:
    overrides = verl_overrides(grpo_config("retriever.urls=[]", "retriever.index=/shared/wiki18_bm25"))
    assert any('index: "/shared/wiki18_bm25"' in override for override in overrides)


def test_the_verl_section_is_validated() -> None:
    for override, fragment in [
        ("verl.gpu_memory_utilization=0", "gpu_memory_utilization"),
        ("verl.extra_overrides=[oops]", "not a Hydra override"),
        ("verl.rollout_name=hf", "'vllm', 'sglang'"),
        ("verl.test_freq=-2", "test_freq"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            grpo_config(override)


def test_every_verl_field_has_its_doc_line() -> None:
    from expandsearch.config import field_docs
    from expandsearch.rl.config import VerlSection

    docs = field_docs(VerlSection)
    assert sorted(docs) == sorted(field.name for field in dataclasses.fields(VerlSection))
    assert all(doc.strip() for doc in docs.values())


# --- the command line --------------------------------------------------------------------------------------------


def test_dry_run_prints_the_local_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--backend", "verl", "--dry-run", "--config", str(GRPO)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    command = shlex.split(line)
    assert command[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"]
    assert command[3:] == verl_overrides(grpo_config())
    assert "validate_config" in captured.err


def test_ray_address_makes_a_ray_job_submit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["train", "--backend", "verl", "--dry-run", "--config", str(GRPO), "--ray-address", "http://head:8265"]
    assert main(argv) == 0
    command = shlex.split(capsys.readouterr().out)
    assert command[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    assert json.loads(command[command.index("--runtime-env-json") + 1]) == {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    entry = command.index("--") + 1
    assert command[entry : entry + 3] == ["python", "-m", "verl.trainer.main_ppo"]
    assert command[entry + 3 :] == verl_overrides(grpo_config())


def test_a_runtime_env_file_is_the_whole_runtime_env() -> None:
    config = grpo_config("verl.ray_runtime_env=cluster/runtime_env.yaml")
    command = verl_command(config, ray_address="http://head:8265", environ={"HF_HUB_OFFLINE": "1"})
    assert command[5:8] == ["--runtime-env", "cluster/runtime_env.yaml", "--"]
    assert "--runtime-env-json" not in command


def test_resume_continues_from_verls_latest_checkpoint() -> None:
    assert 'trainer.resume_mode="auto"' in verl_overrides(grpo_config(), resume=True)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands the launcher runs, each answered with exit status 3 instead of starting verl."""
    commands: list[list[str]] = []

    def fake_run(command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    return commands


def test_without_dry_run_the_command_runs_and_its_status_comes_back(
    tmp_path: Path, ran: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    files = [tmp_path / "train.parquet", tmp_path / "test.parquet"]
    for path in files:
        path.touch()
    overrides = [f"data.train_files=[{files[0]}]", f"data.val_files=[{files[1]}]"]
    assert main(["train", "--backend", "verl", "--config", str(GRPO), *overrides]) == 3
    assert ran == [verl_command(grpo_config(*overrides))]
    # a data file that is not there fails here, before Ray starts
    files[1].unlink()
    assert main(["train", "--backend", "verl", "--config", str(GRPO), *overrides]) == 2
    assert f"data files not found: {files[1]}" in capsys.readouterr().err
    assert len(ran) == 1


def test_a_submitted_job_reads_its_files_on_the_cluster(ran: list[list[str]]) -> None:
    # the shipped paths do not exist here, which only a local run checks; `ray` is found beside this interpreter
    assert main(["train", "--backend", "verl", "--config", str(GRPO), "--ray-address", "http://head:8265"]) == 3
    ((executable, *arguments),) = ran
    assert Path(executable).name == "ray"
    assert arguments[:4] == ["job", "submit", "--address", "http://head:8265"]


def test_the_embedded_default_is_refused_with_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--backend", "verl", "--dry-run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    for fragment in ("data.world", "expandsearch world --out DIR", "warm_start.kind world_expert", "'tiny'"):
        assert fragment in line


@pytest.mark.parametrize("option", [["--dry-run"], ["--ray-address", "http://head:8265"]])
def test_verl_options_need_the_verl_backend(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *option, "--config", str(GRPO)]) == 2
    assert "go with --backend verl" in capsys.readouterr().err


def test_show_config_lists_the_verl_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--show-config"]) == 0
    shown = capsys.readouterr().out
    assert "verl.use_v1 = false  # ``trainer.use_v1``" in shown
    assert "verl.extra_overrides = []" in shown


def test_an_embedded_run_recorded_without_the_verl_section_still_resumes(tmp_path: Path) -> None:
    from expandsearch.config import config_to_dict
    from expandsearch.rl.main_job import RunConfigMismatch, _record_config

    config = TrainConfig(run_dir=str(tmp_path))
    recorded = config_to_dict(config)
    del recorded["verl"]  # as runs wrote config.yaml before the section existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    _record_config(config, tmp_path, resume=True)
    with pytest.raises(RunConfigMismatch, match="seed"):
        _record_config(dataclasses.replace(config, seed=1), tmp_path, resume=True)
