"""Errors a user meets on the way end the run with one line naming what and where, exit status 2,
no traceback: a Hub id offline, a missing data split, a data file that does not parse, a tokenizer
without a chat template. Checked through the real entry point once (a subprocess), the rest on the
CLI functions in this process."""

import os
import subprocess
import sys

import pytest
from absl import flags

from disrouter_jax import evaluate, train
from tests.conftest import PROJECT_ROOT
from tests.paper_setup import as_flags, overrides
from tests.qwen25_pool import copy_without_chat_template

FEW_TASKS = {"data.train_tasks": ("gsm8k",), "data.eval_tasks": ("gsm8k",), "data.out_of_domain": ("squad",)}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_hub_id_offline_ends_the_real_command_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS="")
    done = subprocess.run([sys.executable, "-m", "disrouter_jax.train", "--config=configs/rl_alpha05.py",
                           f"--workdir={tmp_path / 'work'}"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert line.startswith("error: checkpoint Qwen2.5-0.5B-Instruct: Qwen/Qwen2.5-0.5B-Instruct is not a local "
                           "directory and its config.json could not be fetched from the Hugging Face Hub")
    assert "(and 4 more: --config.plan_only=True lists them all)" in line


def _run(module, config_file, values, workdir, monkeypatch):
    argv = [module.__name__, f"--config={config_file}", f"--workdir={workdir}", *as_flags(values)]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.* overrides from sys.argv
    flag_values = module.define_flags(flags.FlagValues())
    flag_values(argv)
    with pytest.raises(SystemExit) as exit_info:
        module.run_cli(flag_values)
    return exit_info.value.code


@pytest.mark.parametrize("module, config_file", [(train, "configs/rl_alpha05.py"),
                                                 (evaluate, "configs/eval_cascade.py")])
def test_a_missing_split_is_one_line(module, config_file, qwen25_pool, shared_data, tmp_path, monkeypatch, capsys):
    values = overrides(qwen25_pool, shared_data, extra={**FEW_TASKS, "data.train_splits": ("train",)})
    assert _run(module, config_file, values, tmp_path, monkeypatch) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: dataset gsm8k (train): gsm8k: no files for split 'train' under {shared_data}/gsm8k")
    assert not (tmp_path / "agents").exists()  # stopped before any agent was loaded


def test_a_data_file_that_does_not_parse_is_one_line(qwen25_pool, shared_data, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "squad").mkdir(parents=True)
    (data / "gsm8k").symlink_to(shared_data / "gsm8k")
    (data / "squad" / "dev-v1.1.json").write_text('{"data": [{"title": "cut here')
    values = overrides(qwen25_pool, data, extra=FEW_TASKS)
    assert _run(train, "configs/rl_alpha05.py", values, tmp_path, monkeypatch) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: dataset squad (eval): {data}/squad/dev-v1.1.json: not valid JSON")


def test_a_tokenizer_without_chat_template_is_one_line(qwen25_pool, shared_data, tmp_path, monkeypatch, capsys):
    base = copy_without_chat_template(qwen25_pool[0]["path"], tmp_path / "base_model")
    pool = [dict(qwen25_pool[0], path=str(base)), *qwen25_pool[1:]]
    values = overrides(pool, shared_data, extra=FEW_TASKS)
    assert _run(train, "configs/rl_alpha05.py", values, tmp_path, monkeypatch) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: tokenizer Qwen2.5-0.5B-Instruct: {base}: the tokenizer has no chat template (no "
                    "chat_template in tokenizer_config.json, no chat_template.jinja); agents must be chat models, "
                    "e.g. Qwen/Qwen2.5-*-Instruct")
