"""The launch dialog's run folder is the engine's and `workbench launch-script`'s for the same run file."""

from __future__ import annotations

import pytest

from launch_scripts import recorder, script_run_dir
from workbench.cli import main
from workbench.core.config import RunConfig
from workbench.core.runs import create_run
from workbench.gui.widgets.launch_dialog import default_run_dir, portable_config


@pytest.mark.parametrize("output", [{"runs_root": "runs", "name": "exp"}, {"runs_root": "~/wb-runs", "name": "exp"},
                                    {"run_dir": "exact-run"}])
def test_the_dialog_the_engine_and_launch_script_choose_one_run_folder(tmp_path, monkeypatch, capsys, output):
    files, elsewhere, home = tmp_path / "files", tmp_path / "elsewhere", tmp_path / "home"
    for folder in (files, elsewhere, home):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    run_file = files / "run.toml"
    RunConfig.from_dict({"model": {"source": "org/model"}, "data": {"train_files": ["/shared/data.jsonl"]},
                         "output": output}).save(run_file)
    monkeypatch.chdir(elsewhere)  # the window's working folder, not the run file's
    config = RunConfig.from_toml(run_file)
    from_dialog = default_run_dir(config)
    assert main(["launch-script", str(run_file), "--scheduler", "plain", "--python", str(recorder(tmp_path))]) == 0
    from_script = str(script_run_dir(capsys.readouterr().out))
    engine = create_run(config).path
    assert str(from_dialog) == from_script == str(engine)
    if "runs_root" in output:  # the run file the dialog saves for the nodes points at the same root
        assert portable_config(config).output.runs_root == str(engine.parent)
