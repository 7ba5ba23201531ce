"""environment.yml (conda) agrees with constraints.txt (pip): the same exact versions."""
import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one `pip:` list"
    return sections[0]


def environment_pins(env: dict) -> dict[str, Requirement]:
    pins = {}
    for line in pip_section(env):
        if line.startswith("-"):  # pip options: -e .[extras]
            continue
        requirement = Requirement(line)
        name = canonical(requirement.name)
        assert name not in pins, f"{name} is listed twice in environment.yml"
        pins[name] = requirement
    return pins


def test_python_comes_from_conda_forge_and_packages_from_pip():
    env = environment()
    assert env["channels"][0] == "conda-forge"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(re.fullmatch(r"python\s*=+\s*3\.\d+(\.\d+)?", d) for d in conda), conda
    assert "pip" in conda
    # everything else comes from pip with the pins: no second source of a package
    assert {re.split(r"[=<> ]", d)[0] for d in conda} == {"python", "pip"}


def test_every_pin_of_environment_yml_is_the_pin_of_constraints_txt():
    pins = constraint_pins()
    for name, requirement in environment_pins(environment()).items():
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{requirement}: pin an exact version"
        assert name in pins, f"{name} is in environment.yml but not in constraints.txt"
        assert specifiers[0].version == pins[name], f"{name}: environment.yml {specifiers[0].version}, constraints.txt {pins[name]}"


def test_every_pin_of_constraints_txt_is_in_environment_yml():
    listed = environment_pins(environment())
    missing = sorted(set(constraint_pins()) - set(listed))
    assert not missing, f"constraints.txt pins these, environment.yml does not: {missing}"


def test_torch_and_torchvision_are_pinned_as_a_pair():
    pins, listed = constraint_pins(), environment_pins(environment())
    for name in ("torch", "torchvision"):
        assert name in listed and str(listed[name].specifier) == f"=={pins[name]}"
        assert listed[name].marker is None  # on every platform, not only Linux


def test_linux_only_markers_only_on_torchs_linux_only_dependencies():
    for name, requirement in environment_pins(environment()).items():
        if requirement.marker is not None:
            assert re.match(r"(nvidia-|cuda-|triton$)", name), f"{name} should install everywhere"
            assert requirement.marker.evaluate({"platform_system": "Linux"})
            assert not requirement.marker.evaluate({"platform_system": "Darwin"})


def test_the_package_itself_is_installed_with_the_makefiles_extras():
    options = [line for line in pip_section(environment()) if line.startswith("-")]
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r'-e\s+"?\.\[([a-z,]+)\]"?', makefile).group(1)
    assert options == [f"-e .[{extras}]"]


def test_every_requirement_of_pyproject_is_pinned_in_constraints_txt():
    """A tool added to an extra (e.g. actionlint for the workflow test) is pinned too, and so
    (by the tests above) is in environment.yml: the three stay in step."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    unpinned = sorted(canonical(Requirement(r).name) for r in requirements if canonical(Requirement(r).name) not in constraint_pins())
    assert not unpinned, f"pyproject.toml requires these, constraints.txt does not pin them: {unpinned}"
    # the pin satisfies the requirement's own bound
    for requirement in map(Requirement, requirements):
        pin = constraint_pins()[canonical(requirement.name)]
        assert requirement.specifier.contains(pin, prereleases=True), f"{requirement}: constraints.txt pins {pin}"
