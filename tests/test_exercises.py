"""Every notebook ends with "Try it": two or three `dvc exp run -S` experiments and the command to
compare them.  Each experiment's overrides are applied to params.yaml the way `dvc exp run` applies
them (DVC's own Hydra override code, which refuses a key params.yaml lacks), must change an existing
value, and must leave every section valid for pluralign.checks; its targets must be stages that read
the changed sections.  So an exercise cannot rot when params are renamed, removed or constrained."""
import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from pluralign.checks import validate

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMMAND = re.compile(r"`(dvc exp run [^`]+)`")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def try_it(path: Path) -> str:
    cell = json.loads(path.read_text())["cells"][-1]
    assert cell["cell_type"] == "markdown" and cell["id"] == "try-it", f"{path.name} does not end with its Try it cell"
    return "".join(cell["source"])


def parse(command: str) -> tuple[list[str], list[str]]:
    """(targets, overrides) of one `dvc exp run [TARGET ...] -S 'k=v' ...`; nothing else is allowed."""
    tokens = shlex.split(command)
    assert tokens[:3] == ["dvc", "exp", "run"], command
    targets, overrides, rest = [], [], tokens[3:]
    while rest:
        tok = rest.pop(0)
        if tok == "-S":
            overrides.append(rest.pop(0))
        else:
            assert not tok.startswith("-"), f"{command}: only -S is used in the exercises, got {tok}"
            targets.append(tok)
    return targets, overrides


def upstream(stage: str) -> set[str]:
    """The stage and every stage whose outputs it depends on, transitively (what `dvc exp run STAGE` may run)."""
    outs = {name: [str(o) if isinstance(o, str) else next(iter(o)) for o in st.get("outs", []) + st.get("metrics", [])]
            for name, st in STAGES.items()}
    seen, todo = set(), [stage]
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        for dep in STAGES[s].get("deps", []):
            todo += [n for n, paths in outs.items() if any(dep == p or dep.startswith(p.rstrip("/") + "/") for p in paths)]
    return seen


def read_params(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location("run_stage", ROOT / "notebooks" / "run_stage.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner.read_params(path, path.name)  # as DVC reads it


CASES = [(p.name, c) for p in NOTEBOOKS for c in COMMAND.findall(try_it(p))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_two_or_three_exercises_and_the_compare_command(path):
    text = try_it(path)
    assert text.startswith("## Try it\n")
    items = re.findall(r"^\d\. ", text, re.M)
    commands = COMMAND.findall(text)
    assert 2 <= len(items) <= 3 and len(commands) == len(items), (len(items), len(commands))
    assert "`dvc exp show --only-changed`" in text.strip().splitlines()[-1]


@pytest.mark.parametrize("name,command", CASES, ids=[f"{n[:2]}-{i}" for i, (n, _) in enumerate(CASES)])
def test_each_exercise_changes_existing_params_to_valid_values(tmp_path, name, command):
    from dvc.utils.hydra import apply_overrides

    targets, overrides = parse(command)
    assert overrides, f"{command}: an exercise sets at least one param"
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, overrides)  # what `dvc exp run -S` does; an unknown key raises here
    before, after = read_params(ROOT / "params.yaml"), read_params(params)
    changed = set()
    for o in overrides:
        section, key = o.split("=", 1)[0].split(".", 1)
        assert key in before[section], f"{command}: {section}.{key} is not in params.yaml"
        assert after[section][key] != before[section][key], f"{command}: {section}.{key} is already that value"
        changed.add(section)
    for section, values in after.items():
        validate(section, values)  # raises ParamError naming the key
    for target in targets:
        assert target in STAGES, f"{command}: no stage {target!r}"
        reads = {p for s in upstream(target) for p in STAGES[s].get("params", [])}
        assert changed <= reads, f"{command}: {sorted(changed - reads)} are not read by {target} or its upstream stages"


def test_the_parser_sees_targets_and_overrides():
    assert parse("dvc exp run evaluate -S 'align.seeds=[0,1,2]' -S 'evaluate.n_boot=200'") == (
        ["evaluate"], ["align.seeds=[0,1,2]", "evaluate.n_boot=200"])
    assert {"align", "reward", "label", "pretrain", "corpus", "evaluate"} <= upstream("evaluate")
    assert upstream("impossibility") == {"impossibility"}


def test_an_override_of_a_missing_key_or_a_bad_value_is_caught(tmp_path):
    from dvc.utils.hydra import InvalidArgumentError, apply_overrides
    from pluralign.checks import ParamError

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    with pytest.raises(InvalidArgumentError):
        apply_overrides(params, ["impossibility.no_such_key=1"])
    apply_overrides(params, ["nash_md.constant_eta=20.0"])  # eta * tau = 2 > 1
    with pytest.raises(ParamError, match="constant_eta"):
        validate("nash_md", read_params(params)["nash_md"])
